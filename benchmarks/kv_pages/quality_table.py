"""Fidelity top-1 per (length, keep) of one bench folder, mean and Student-t 95% interval over samples
(``tokensieve.stats.t_interval``; a sample's continuation tokens are one unit: its top-1 is their mean). Written
into docs/serving.md's ``serving-quality`` block and printed; no model runs.

    .venv/bin/python benchmarks/kv_pages/quality_table.py benchmarks/kv_pages/results_serving30 --doc docs/serving.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import fill_block, md_table

from tokensieve.stats import t_interval


def table(folder: str) -> list[str]:
    rows = [json.loads(ln) for ln in (Path(folder) / "results.jsonl").read_text().splitlines() if ln.strip()]
    top1: dict[tuple[str, int, float], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("type") == "cell" and r.get("kind") == "fidelity" and r["method"] != "full":
            top1[(r["method"], r["length"], r["keep"])].append(100 * r["metrics"]["top1"])
    body = []
    for (m, length, keep), xs in sorted(top1.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        iv = t_interval(xs)
        body.append([f"`{m}`", length, keep, iv.n, f"{iv.estimate:.1f} [{iv.lo:.1f}, {iv.hi:.1f}]"])
    return md_table(["method", "tokens", "keep", "n", "fidelity top-1 % (Student-t 95%)"], body, align="lrrrl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--doc", help="write the table into this page's <!-- generated:serving-quality --> block")
    args = ap.parse_args()
    lines = table(args.folder)
    if args.doc:
        page = Path(args.doc)
        page.write_text(fill_block(page.read_text(), "serving-quality", lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
