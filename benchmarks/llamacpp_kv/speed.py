"""Decode speed from a 4x compressed cache against the full cache inside llama.cpp, and scoring seconds against
prefill seconds. Per length: one prefill (timed: llama.cpp's prefill seconds), one scoring pass (timed), one
selection at keep ``--keep``; then ``--reps`` repetitions, each timing ``--new`` greedy tokens from the full and
from the compressed cache at every thread count, interleaved so that the machine's load hits both alike. The
result is the per-repetition ratio (compressed / full tokens/s); the table gives its median and range. The load
average (``/proc/loadavg``) is recorded with every row. Rows go to ``--out`` (JSON lines).

    cd benchmarks/llamacpp_kv && OMP_NUM_THREADS=1 ../../.venv/bin/python speed.py --tokens 4000,8000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from run import meta  # benchmarks/llamacpp_kv/run.py: the same meta row

from tokensieve.engines.llamacpp import DEFAULT, Engine, Settings, aggregate
from tokensieve.engines.llamacpp.evict import evict
from tokensieve.engines.llamacpp.scores import get_method, keep_cells, reconstruction_pass, window_pass
from tokensieve.engines.llamacpp.state import restore, snapshot
from tokensieve.measure.tasks import get_task


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", default="4000,8000")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--method", default="kvzip", help="kvzip (reconstruction pass), snapkv (window at prefill) or "
                   "streaming (no scoring pass: decode speed depends on how many cells are kept, not which)")
    p.add_argument("--task", default="niah_single:haystack=prose")
    p.add_argument("--out", default="results/speed.jsonl")
    args = p.parse_args()
    task = get_task(args.task)
    threads = [int(t) for t in args.threads.split(",")]
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a") as out:
        out.write(json.dumps({**meta(args), "loadavg": load()}) + "\n")
        for n_tokens in [int(t) for t in args.tokens.split(",")]:
            eng = Engine(args.model, Settings(n_ctx=n_tokens + 512, threads=threads[0]))
            sample = task.sample(eng.tokenizer, n_tokens, 0, seed=0)
            ids = eng.prompt.context_ids(sample.context)
            q = sample.questions[0]
            prompt = eng.prompt.question_ids(q.text, q.answer_prefix)
            t = time.perf_counter()
            eng.prefill(ids)
            prefill_s = time.perf_counter() - t
            full = snapshot(eng)
            eng.clear()
            m = get_method(args.method)
            t = time.perf_counter()
            budget = max(1, round(args.keep * len(ids)))
            if args.method == "streaming":
                restore(eng, full)
                scores = np.asarray(eng.seq.cells, dtype=np.float32)  # recency
            elif args.method == "kvzip":
                eng.prefill(ids)
                t = time.perf_counter()
                scores = aggregate(reconstruction_pass(eng, m.chunk), DEFAULT, budget)
            else:
                scores = aggregate(window_pass(eng, ids, m.observe), DEFAULT, budget)  # prefill + window's attention
            score_s = time.perf_counter() - t
            keep = keep_cells(scores, budget, m.sinks, m.window)
            base = {"type": "row", "model": args.model, "tokens": n_tokens, "context_tokens": len(ids),
                    "method": args.method, "aggregate": DEFAULT, "kept": budget, "prefill_seconds": prefill_s,
                    "score_seconds": score_s}  # fmt: skip
            out.write(json.dumps({**base, "kind": "scoring", "loadavg": load()}) + "\n")
            out.flush()
            for rep in range(args.reps):
                for th in threads:
                    eng.set_threads(th)
                    speeds = {}
                    for cache in ("full", "compressed") if rep % 2 == 0 else ("compressed", "full"):
                        restore(eng, full)
                        if cache == "compressed":
                            evict(eng, keep)
                        ans = eng.generate(prompt, args.new, stop=False)
                        speeds[cache] = max(len(ans.tokens) - 1, 1) / ans.decode_seconds
                    row = {**base, "kind": "decode", "rep": rep, "threads": th, "full_tok_s": speeds["full"],
                           "compressed_tok_s": speeds["compressed"], "ratio": speeds["compressed"] / speeds["full"],
                           "loadavg": load()}  # fmt: skip
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(json.dumps(row), file=sys.stderr, flush=True)
            eng.close()


if __name__ == "__main__":
    main()
