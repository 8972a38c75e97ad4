"""A needle in a document longer than the cache, read chunk by chunk inside llama.cpp under a budget:
tokensieve's chunked eviction (scores from llama.cpp's attention, with and without re-numbering) against
llama.cpp's context shift (drop the oldest, keep 4 sinks) on the same documents, and the full context where it
fits (not run yet). Rows go to ``--out`` (JSON lines, resumable).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/longdoc.py --tokens 4000 --budget 1024 --samples 10
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from run import meta  # benchmarks/llamacpp_kv/run.py: the same meta row

from tokensieve.engines.llamacpp import Engine, Settings, read_chunked, read_shifted
from tokensieve.measure.tasks import get_task, score


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
    p.add_argument("--out", default="benchmarks/llamacpp_kv/results/longdoc.jsonl")
    args = p.parse_args()
    task = get_task(args.task)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out_path.exists():
        done = {json.loads(x).get("key") for x in out_path.read_text().splitlines() if x.strip()}
    room = args.budget + 2 * args.chunk + 128  # budget + chunk, and kvzip's prompt + one reconstruction chunk
    small = Engine(args.model, Settings(n_ctx=room, threads=args.threads))
    cells = [(m, r) for m in args.methods.split(",") if m for r in (False, True)] + [("context-shift", True)]
    with open(out_path, "a") as out:
        out.write(json.dumps(meta(args)) + "\n")
        for index in range(args.samples):
            sample = task.sample(small.tokenizer, args.tokens, index, seed=0)
            ids = small.prompt.context_ids(sample.context)
            for method, renumber in cells:
                key = json.dumps([args.model, args.task, args.tokens, args.budget, index, method, renumber])
                if key in done:
                    continue
                if method == "context-shift":
                    rep = read_shifted(small, ids, args.budget, args.chunk)
                else:
                    rep = read_chunked(small, ids, args.budget, args.chunk, method, renumber=renumber)
                for qi, q in enumerate(sample.questions):
                    ans = small.answer(q.text, q.max_new_tokens, q.answer_prefix)
                    s, _ = score(ans.text, q)
                    row = {"type": "row", "key": key, "model": args.model, "task": args.task, "tokens": args.tokens,
                           "document_tokens": len(ids), "budget": args.budget, "chunk": args.chunk, "index": index,
                           "method": method, "renumber": renumber, "question": qi, "score": s, "answer": ans.text,
                           "seconds": rep.seconds, "kept": rep.kept_tokens, "state_bytes": rep.state_bytes,
                           "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}  # fmt: skip
                    out.write(json.dumps(row) + "\n")
                    out.flush()
            print(f"sample {index + 1}/{args.samples} done", flush=True, file=sys.stderr)


if __name__ == "__main__":
    main()
