"""Goal 4's quality half (issue 28): `block` (block-wise prefill under the budget) against the same score after a
full prefill, question unseen, on the same samples of one `tokensieve bench` run: per keep, each method's right
answers (Wilson) and the paired difference block - base (paired bootstrap over samples, both tasks pooled and
per task), with block's whole block-wise prefill over the plain prefill's seconds.

    .venv/bin/python benchmarks/block_prefill/quality.py benchmarks/block_prefill/results/quality_2048/results.jsonl \
        --block block:base=keydiff:size=128 --base keydiff --out benchmarks/block_prefill/results/quality_2048_paired
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py

from _common import command, write_results

from tokensieve.measure.bench.report import Results
from tokensieve.stats import paired_bootstrap, wilson


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", type=Path)
    p.add_argument("--block", default="block:base=keydiff:size=128")
    p.add_argument("--base", default="keydiff")
    p.add_argument("--out", type=Path, default=Path("benchmarks/block_prefill/results/quality_2048_paired"))
    args = p.parse_args()
    res = Results.load(args.results)  # a rerun cell replaces the old one; failed cells apart
    meta = res.meta[-1]
    cells = [c for c in res.cells if c["engine"] == "tokensieve"]
    by: dict[tuple[str, str, float], dict[tuple, dict]] = defaultdict(dict)
    for r in cells:
        key = (r["task"], r["length"], r["sample"], r["seed"])
        for task in (r["task"], "both tasks"):
            by[(task, r["method"], r["keep"])][key] = r
    tasks = ["both tasks", *sorted({r["task"] for r in cells})]
    keeps = sorted({r["keep"] for r in cells if r["keep"] < 1}, reverse=True)
    lines = [f"# `{args.block}` against `{args.base}` after a full prefill, {meta['model']}, {meta['lengths']} tokens",
             "", "Question unseen. Paired bootstrap over the same samples (95%); right answers with Wilson intervals.",
             ""]  # fmt: skip
    out = []
    for task in tasks:
        full = by[(task, "full", 1.0)]
        lines += [f"## {task}: n = {len(full)}, full cache {sum(r['score'] for r in full.values()):.0f}/{len(full)}",
                  "", f"| keep | `{args.block}` (Wilson) | `{args.base}` (Wilson) | difference (paired bootstrap) |"
                  " block prefill s / plain prefill s |", "|---|---|---|---|---|"]  # fmt: skip
        for keep in keeps:
            blk, base = by[(task, args.block, keep)], by[(task, args.base, keep)]
            ids = sorted(set(blk) & set(base))
            a, b = [blk[i]["score"] for i in ids], [base[i]["score"] for i in ids]
            wa, wb, d = wilson(sum(a), len(a)), wilson(sum(b), len(b)), paired_bootstrap(a, b)
            cost = sum(blk[i]["compress_seconds"] / blk[i]["prefill_seconds"] for i in ids) / len(ids)
            lines.append(
                f"| {keep} | {sum(a):.0f}/{len(a)} [{wa.lo:.2f}, {wa.hi:.2f}] | {sum(b):.0f}/{len(b)} "
                f"[{wb.lo:.2f}, {wb.hi:.2f}] | {d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] | {cost:.2f} |"
            )
            out.append({"task": task, "keep": keep, "n": len(ids), "block_right": sum(a), "base_right": sum(b),
                        "difference": [d.estimate, d.lo, d.hi], "block_prefill_over_prefill": cost})  # fmt: skip
        lines.append("")
    write_results(args.out, out, lines, command("block_prefill/quality.py", args, positional=("results",)))


if __name__ == "__main__":
    main()
