"""Compression seconds of the question-unseen scores against the prefill's seconds, one run per length.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/unseen_cost/unseen_cost.py --lengths 1024,2048,4096 \
        --out benchmarks/unseen_cost/results/1k_2k

Per length: a context of that many SmolLM2 tokens (the bundled essays, then the offline prose corpus), one plain
prefill (the reference:
``tokensieve.prefill`` observing nothing, best of ``--repeats``), then for each method a prefill observing what
it needs plus ``Prefill.compress`` at keep 0.25 (its full pass included, nothing memoised); the method's cost is
its compress seconds plus the extra prefill seconds its observation adds over the plain prefill.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import tokensieve
from tokensieve.kv import get_method, prefill

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_rows, write_table

DEFAULT = "kvzip,kvzip:chunk=256,kvzip:stride=4,kvzip+,expected_attention,keydiff,lagkv,surprise,snapkv,h2o"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--methods", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = tokensieve.load_model()
    # the bundled essays first (~2.1k tokens), then the offline prose corpus, so every length has real text
    from tokensieve.runtime.corpus import prose_paragraphs

    text = (Path(tokensieve.__file__).parent / "data" / "essays.txt").read_text()
    text += "\n\n" + "\n\n".join(prose_paragraphs())
    all_ids = tok.encode(text, add_special_tokens=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        if len(all_ids) < n:
            raise SystemExit(f"the bundled text has {len(all_ids)} tokens, fewer than {n}")
        ids = torch.tensor([all_ids[:n]])
        base = min(prefill(model, tok, ids).seconds for _ in range(args.repeats))
        for spec in args.methods.split(","):
            name, *kv = spec.split(":")
            params = {k: type(getattr(get_method(name), k))(v) for k, v in (p.split("=") for p in kv)}
            m = get_method(name, **params)
            best = None
            for _ in range(args.repeats):
                pre = prefill(model, tok, ids, methods=[m])
                start = time.perf_counter()
                pre.compress(m, keep=0.25)
                cost = time.perf_counter() - start + max(0.0, pre.seconds - base)
                best = cost if best is None else min(best, cost)
            row = {"length": n, "method": spec, "prefill_s": round(base, 3), "compress_s": round(best, 3)}
            row["ratio"] = round(best / base, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows((out / "results.jsonl"), rows)
    lines = [
        "# Compression cost of the question-unseen scores (SmolLM2, CPU, 1 thread)",
        "",
        "`" + " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]) + "`",
        "",
        "| length | method | prefill s | compression s | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['length']} | {r['method']} | {r['prefill_s']} | {r['compress_s']} | {r['ratio']} |" for r in rows]
    write_table((out / "summary.md"), lines)


if __name__ == "__main__":
    main()
