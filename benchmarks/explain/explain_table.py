"""One table from several ``explain_bench.py`` runs: per method and length, seconds, needle recall and the
faithfulness ratios against a random ranking, with 95% intervals from ``tokensieve.stats`` (issue 26, item 16):

- seconds: Student-t over samples (``t_interval``);
- needle recall @5%: each sample's share of its needle tokens found (the tokens of one context are one cluster),
  bootstrapped over samples (``bootstrap`` of the per-sample shares);
- comp / suff / soft-NC against random: the method and its random ranking scored the same samples, so the ratio
  of their means gets a paired bootstrap over samples (``paired_bootstrap(ratio=True)``). "Beats random" only where
  the interval excludes 1. With 2-3 samples a bootstrap has only a handful of distinct resamples: those intervals
  are too narrow, and the n column says so.

    .venv/bin/python benchmarks/explain/explain_table.py benchmarks/explain/results/faith_{512,1024,2048}
    .venv/bin/python benchmarks/explain/explain_table.py --doc docs/explain.md benchmarks/explain/results/faith_*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import fill_block

from tokensieve.stats import Interval, bootstrap, paired_bootstrap, t_interval

RATIOS = {"comprehensiveness": "comp / random", "sufficiency": "suff / random", "soft_nc": "soft-NC / random"}


def fmt(iv: Interval) -> str:
    if iv.n == 0:
        return ""
    if iv.lo != iv.lo:
        return f"{iv.estimate:.3g} (n=1)"
    return f"{iv.estimate:.3g} [{iv.lo:.3g}, {iv.hi:.3g}]"


def cells(sel: list[dict]) -> list[str]:
    out = [fmt(t_interval([r["seconds"] for r in sel])), fmt(bootstrap([r["needle_recall@5"] for r in sel]))]
    for k in RATIOS:
        pairs = [(r[k], r[f"{k}_random"]) for r in sel if k in r and f"{k}_random" in r]
        out.append(fmt(paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs], ratio=True)) if pairs else "")
    return out


def table(dirs: list[str]) -> list[str]:
    rows = [json.loads(line) for d in dirs for line in (Path(d) / "rows.jsonl").read_text().splitlines() if line]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    head = ["s (t)", "needle recall @5% (bootstrap)", *(f"{v} (paired bootstrap)" for v in RATIOS.values())]
    out = ["| method | tokens | n | " + " | ".join(head) + " |", "|---" * (len(head) + 3) + "|"]
    for m in methods:
        for n in lengths:
            sel = [r for r in rows if r["method"] == m and r["length"] == n]
            if sel:
                out.append(f"| {m} | {n} | {len(sel)} | " + " | ".join(cells(sel)) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--doc", help="write the table into this page's <!-- generated:explain-faith --> block")
    args = ap.parse_args()
    lines = table(args.dirs)
    if args.doc:
        page = Path(args.doc)
        page.write_text(fill_block(page.read_text(), "explain-faith", lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
