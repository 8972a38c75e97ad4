"""Choose the default shared-selection aggregate on VALIDATION samples (seed 1; the reported grid uses seed 0):
per sample one prefill (the full cache answers once), one KVzip reconstruction pass and a snapshot. For every
(aggregate, skip_first, keep) the kept cells give ``needle_kept``, the share of the answer's tokens (located in the
context by llama.cpp's own token pieces) the selection keeps: free, since nothing is decoded. The cells in
``--answer`` are also restored, evicted and asked (question unseen), which is what costs. Rows go to ``--out``
(JSON lines, resumable by sample).

    cd benchmarks/llamacpp_kv && OMP_NUM_THREADS=1 ../../.venv/bin/python choose_aggregate.py --model smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from run import done_keys, meta  # benchmarks/llamacpp_kv/run.py: the same meta row

from tokensieve.engines.llamacpp import AGGREGATES, Engine, Settings, aggregate
from tokensieve.engines.llamacpp.evict import evict
from tokensieve.engines.llamacpp.scores import get_method, keep_cells, pooled, reconstruction_pass
from tokensieve.engines.llamacpp.state import restore, snapshot
from tokensieve.engines.llamacpp.text import piece
from tokensieve.measure.tasks import get_task, score


def needle_cells(eng: Engine, ids: list[int], texts: list[str]) -> list[int]:
    """Indices of the context tokens whose bytes overlap any occurrence of the answer texts."""
    spans, at = [], 0
    for t in ids:
        b = len(piece(eng.m.vocab, t))
        spans.append((at, at + b))
        at += b
    raw = b"".join(piece(eng.m.vocab, t) for t in ids)
    hit: set[int] = set()
    for text in texts:
        needle = text.encode()
        start = raw.find(needle)
        while start >= 0:
            end = start + len(needle)
            hit.update(i for i, (a, b) in enumerate(spans) if a < end and b > start)
            start = raw.find(needle, end)
    return sorted(hit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--seed", type=int, default=1, help="validation seed (the reported grid uses 0)")
    p.add_argument("--task", default="niah_single:haystack=prose")
    p.add_argument("--aggregates", default=",".join(AGGREGATES))
    p.add_argument("--skips", default="0,2")
    p.add_argument("--keeps", default="0.25,0.1")
    p.add_argument("--answer", default="0.25", help="keeps whose cells are also answered (skip 0 only)")
    p.add_argument("--pools", default="1", help="max-pool kernels along the keys to try (1: none, KVzip's own)")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--dump", default="", help="also save each sample's per-layer scores here (npz)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/choose_aggregate.jsonl")
    args = p.parse_args()
    task = get_task(args.task)
    out_path = Path(args.out)
    done = done_keys(out_path)
    eng = Engine(args.model, Settings(n_ctx=args.tokens + args.chunk + 512, threads=args.threads))
    cells = [(a, int(s), int(pl), float(k)) for a in args.aggregates.split(",") for s in args.skips.split(",")
             for pl in args.pools.split(",") for k in args.keeps.split(",")]  # fmt: skip
    m = get_method("kvzip")
    with open(out_path, "a") as out:
        out.write(json.dumps(meta(args)) + "\n")
        for index in range(args.samples):
            sample = task.sample(eng.tokenizer, args.tokens, index, seed=args.seed)
            ids = eng.prompt.context_ids(sample.context)
            base = {"type": "row", "model": args.model, "task": args.task, "tokens": args.tokens, "seed": args.seed,
                    "index": index}  # fmt: skip

            def key(cell: str) -> str:
                return json.dumps([args.model, args.task, args.tokens, args.seed, index, cell])  # noqa: B023

            if key("full") in done:
                continue
            eng.clear()
            eng.prefill(ids)
            texts = [it.text for q in sample.questions for it in q.items]
            needle = needle_cells(eng, ids, texts)
            lines: list[str] = []
            for qi, q in enumerate(sample.questions):
                s, _ = score(eng.answer(q.text, q.max_new_tokens, q.answer_prefix).text, q)
                lines.append(json.dumps({**base, "key": key("full"), "cell": "full", "question": qi, "score": s,
                                      "needle_tokens": len(needle)}) + "\n")  # fmt: skip
            snap = snapshot(eng)
            t = time.perf_counter()
            layers = reconstruction_pass(eng, args.chunk)
            recon_s = time.perf_counter() - t
            answer = {float(k) for k in args.answer.split(",") if k}
            for how, skip, pool, keep in cells:
                budget = max(1, round(keep * len(ids)))
                kept = keep_cells(aggregate(pooled(layers, pool), how, budget, skip), budget, m.sinks, m.window)
                share = len(set(kept) & set(needle)) / max(len(needle), 1)
                cell = f"{how}/{skip}/{keep}" if pool == 1 else f"{how}/{skip}/p{pool}/{keep}"  # older rows: no pool
                row = {**base, "key": key(cell), "cell": cell, "aggregate": how, "skip_first": skip, "pool": pool,
                       "keep": keep, "needle_kept": share, "recon_seconds": recon_s}  # fmt: skip
                if keep in answer and skip == 0:
                    restore(eng, snap)
                    evict(eng, kept)
                    for qi, q in enumerate(sample.questions):
                        ans = eng.answer(q.text, q.max_new_tokens, q.answer_prefix)
                        s, _ = score(ans.text, q)
                        lines.append(json.dumps({**row, "question": qi, "score": s, "answer": ans.text}) + "\n")
                else:
                    lines.append(json.dumps(row) + "\n")
            out.write("".join(lines))  # a cut run leaves no half sample
            if args.dump:
                import numpy as np

                Path(args.dump).mkdir(parents=True, exist_ok=True)
                np.savez_compressed(f"{args.dump}/{args.model}_{args.tokens}_{index}.npz", needle=np.array(needle),
                                    **{f"l{i}": v.astype(np.float16) for i, v in layers.items()})  # fmt: skip
            out.flush()
            print(f"sample {index + 1}/{args.samples} done", flush=True, file=sys.stderr)


if __name__ == "__main__":
    main()
