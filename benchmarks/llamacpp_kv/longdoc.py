"""A needle in a document longer than the cache, read chunk by chunk inside llama.cpp under a budget:
tokensieve's chunked eviction (scores from llama.cpp's attention, with and without re-numbering) against
llama.cpp's context shift (drop the oldest, keep 4 sinks) on the same documents, and the full context
(``--methods full``: one context of the document's length; run it in its own process, since every row records
the process's peak resident memory, ``VmHWM``, which a full context would dominate). Rows go to ``--out``
(JSON lines, resumable).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/longdoc.py --tokens 4000 --budget 1024 --samples 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from run import done_keys, meta  # benchmarks/llamacpp_kv/run.py: the same meta row

from tokensieve.engines.llamacpp import Engine, Settings, read_chunked, read_shifted
from tokensieve.engines.llamacpp.chunked import ChunkedReport
from tokensieve.measure.tasks import get_task, score


def vm_hwm_kb() -> int:
    """The process's peak resident set (``VmHWM`` in /proc/self/status), in kB: nothing subtracted."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def read_full(eng: Engine, ids: list[int]) -> ChunkedReport:
    eng.clear()
    t = time.perf_counter()
    eng.prefill(ids)
    return ChunkedReport("full", len(ids), len(eng.seq), 1, time.perf_counter() - t, len(ids), eng.state_bytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=4000)
    p.add_argument("--budget", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--task", default="niah_single:haystack=prose")
    p.add_argument("--methods", default="snapkv,kvzip")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--aggregate", default="max", help="per-cell score from layers x heads (see aggregate.py)")
    p.add_argument("--renumber", default="False,True", help="position modes for the scored methods")
    p.add_argument("--seed", type=int, default=0, help="sample seed (0: reported; 1: validation, for choosing --pool)")
    p.add_argument("--pool", type=int, default=0, help="max-pool kernel along the keys (0: the method's own)")
    p.add_argument("--out", default="benchmarks/llamacpp_kv/results/longdoc.jsonl")
    args = p.parse_args()
    task = get_task(args.task)
    out_path = Path(args.out)
    done = done_keys(out_path)
    methods = [m for m in args.methods.split(",") if m]
    modes = [r == "True" for r in args.renumber.split(",") if r]
    room = args.budget + 2 * args.chunk + 128  # budget + chunk, and kvzip's prompt + one reconstruction chunk
    if methods == ["full"]:
        room = args.tokens + 512  # the whole document in one context
    small = Engine(args.model, Settings(n_ctx=room, threads=args.threads))
    cells = [(m, r) for m in methods if m not in ("full", "context-shift") for r in modes]
    cells += [(m, m != "full") for m in methods if m in ("full", "context-shift")]
    with open(out_path, "a") as out:
        out.write(json.dumps(meta(args)) + "\n")
        for index in range(args.samples):
            sample = task.sample(small.tokenizer, args.tokens, index, seed=args.seed)
            ids = small.prompt.context_ids(sample.context)
            for method, renumber in cells:
                extra = [args.seed, args.pool] if (args.seed, args.pool) != (0, 0) else []  # older keys had neither
                key = json.dumps([args.model, args.task, args.tokens, args.budget, index, method, renumber, *extra])
                if key in done:
                    continue
                if method == "full":
                    rep = read_full(small, ids)
                elif method == "context-shift":
                    rep = read_shifted(small, ids, args.budget, args.chunk)
                else:
                    params = {"pool": args.pool} if args.pool else {}
                    rep = read_chunked(small, ids, args.budget, args.chunk, method, args.aggregate, renumber=renumber,
                                       **params)  # fmt: skip
                for qi, q in enumerate(sample.questions):
                    ans = small.answer(q.text, q.max_new_tokens, q.answer_prefix)
                    s, _ = score(ans.text, q)
                    row = {"type": "row", "key": key, "model": args.model, "task": args.task, "tokens": args.tokens,
                           "document_tokens": len(ids), "budget": args.budget, "chunk": args.chunk, "index": index,
                           "method": method, "renumber": renumber, "question": qi, "score": s, "answer": ans.text,
                           "seconds": rep.seconds, "kept": rep.kept_tokens, "state_bytes": rep.state_bytes,
                           "aggregate": args.aggregate, "seed": args.seed, "pool": args.pool or None, "n_ctx": room,
                           "vm_hwm_kb": vm_hwm_kb(),
                           "loadavg": Path("/proc/loadavg").read_text().split()[:3]}  # fmt: skip
                    out.write(json.dumps(row) + "\n")
                    out.flush()
            print(f"sample {index + 1}/{args.samples} done", flush=True, file=sys.stderr)


if __name__ == "__main__":
    main()
