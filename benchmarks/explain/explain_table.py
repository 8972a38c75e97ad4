"""One table from several ``explain_bench.py`` runs: per method and length, seconds, needle recall and the
faithfulness figures (mean and 95% t half-width over samples), for docs/explain.md.

    .venv/bin/python benchmarks/explain/explain_table.py benchmarks/explain/results/faith_{512,1024,2048}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
sys.path.insert(0, str(Path(__file__).parent))
from _common import print_provenance
from explain_bench import ci

COLUMNS = {
    "seconds": "s",
    "needle_recall@5": "needle recall @5%",
    "comprehensiveness_ratio": "comp / random",
    "sufficiency_ratio": "suff / random",
    "soft_nc_ratio": "soft-NC / random",
}


def fmt(xs: list[float]) -> str:
    mean, half, n = ci(xs)
    if n == 0:
        return ""
    return f"{mean:.3g}" if half != half else f"{mean:.3g} ± {half:.2g}"


def main(dirs: list[str]) -> None:
    rows = [json.loads(line) for d in dirs for line in (Path(d) / "rows.jsonl").read_text().splitlines() if line]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    print("| method | tokens | n | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for m in methods:
        for n in lengths:
            sel = [r for r in rows if r["method"] == m and r["length"] == n]
            if sel:
                cells = [fmt([r[k] for r in sel if k in r]) for k in COLUMNS]
                print(f"| {m} | {n} | {len(sel)} | " + " | ".join(cells) + " |")
    print_provenance()


if __name__ == "__main__":
    main(sys.argv[1:])
