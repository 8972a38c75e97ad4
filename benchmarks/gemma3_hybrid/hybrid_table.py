"""The Gemma-3 question-unseen table: per length, method and keep, the share of the full cache's score (mean over
the tasks' samples, 95% bootstrap over samples), the bytes held (share of the full cache's, measured) and how
they split between sliding-window and full-attention layers.

    .venv/bin/python benchmarks/gemma3_hybrid/hybrid_table.py benchmarks/gemma3_hybrid/results/gemma3_unseen_1024 \
        benchmarks/gemma3_hybrid/results/gemma3_unseen_2048 --out benchmarks/gemma3_hybrid/results/gemma3_hybrid/unseen
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_results

from tokensieve.stats import paired_bootstrap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cells: dict[tuple, list[dict]] = defaultdict(list)
    metas = []
    for d in args.dirs:
        for line in (Path(d) / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "meta":
                metas.append(r)
            elif r.get("type") == "cell" and r.get("engine") == "tokensieve":
                cells[(r["length"], r["method"], r["keep"])].append(r)
    full = {
        (r["length"], r["task"], r["sample"]): r["score"] for (_, m, _), rs in cells.items() if m == "full" for r in rs
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Gemma-3 270M, question unseen: score as a share of the full cache's, bytes as a share of the full cache's",
        "",
        f"Commit {commit}; " + "; ".join(f"`{m['command']}` (torch {m['torch']}, transformers {m['transformers']})"
                                         for m in metas),
        "Machine: shared 2-core CPU, 1 thread. Tasks: niah_single:haystack=prose and niah_multikey (samples pooled).",
        "",
        "| length | method | keep | n | full cache | score / full (95% bootstrap) | bytes held | of which sliding |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    rows = []
    order = sorted(cells.items(), key=lambda x: (x[0][0], x[0][1], -x[0][2]))
    for (length, method, keep), rs in order:
        done = [r for r in rs if (r["length"], r["task"], r["sample"]) in full]
        if method == "full" or not done:
            continue
        pairs = [(r["score"], full[(r["length"], r["task"], r["sample"])]) for r in done]
        base = sum(f for _, f in pairs) / len(pairs)
        iv = paired_bootstrap([sc for sc, _ in pairs], [f for _, f in pairs], ratio=True)  # share of the full
        lo, hi = iv.lo, iv.hi
        held = sum(r["kv_bytes"] / r["kv_bytes_full"] for r in done) / len(done)
        sliding = sum(r["kv_bytes_sliding"] / r["kv_bytes"] for r in done) / len(done)
        mean = sum(s for s, _ in pairs) / len(pairs) / base if base else 0.0
        lines.append(f"| {length} | `{method}` | {keep} | {len(done)} | {base:.2f} | {mean:.0%} [{lo:.0%}, {hi:.0%}] "
                     f"| {held:.3f} | {sliding:.0%} |")  # fmt: skip
        rows.append({"length": length, "method": method, "keep": keep, "n": len(done), "full": base, "share": mean,
                     "lo": lo, "hi": hi, "bytes": held, "sliding_share": sliding})  # fmt: skip
    write_results(Path(args.out), rows, lines)


if __name__ == "__main__":
    main()
