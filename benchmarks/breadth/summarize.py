"""Issue 28 (breadth): the new training-free scores through the bench, question unseen, one table.

    OMP_NUM_THREADS=1 .venv/bin/tokensieve bench --tasks niah_single:haystack=prose,niah_multikey --lengths 2048 \
        --keep 0.5,0.25,0.1 --samples 30 --methods kvzip,snapkv,leverage,non_causal_attn,compactor,cur,cap,\
simlayerkv,finch,kvgrad,kvcompose,gui_kv --out benchmarks/breadth/results/2048
    .venv/bin/python benchmarks/breadth/summarize.py benchmarks/breadth/results/2048

Per method and keep: the retrieval score (mean over the two tasks' 0/1 items, with a Wilson interval over the
pooled samples), the share of the full cache's score, the KV bytes held over the full cache's (measured), and
compression seconds over the same sample's prefill seconds (median over samples; the bench's own timings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_table

from tokensieve.stats import wilson


def cells_of(rows: dict, method: str, task: str, sample: int) -> list[dict]:
    """Every keep's cell of ``method`` on one sample (a pass the keeps share is charged to the first keep run)."""
    mine = [c for (m, _), group in rows.items() if m == method for c in group]
    return [c for c in mine if (c["task"], c["sample"]) == (task, sample)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    args = ap.parse_args()
    folder = Path(args.folder)
    cells = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    cells = [c for c in cells if c.get("type") == "cell" and c.get("engine") == "tokensieve"]
    # only samples every method finished (the same samples in every row)
    by_sample = defaultdict(set)
    for c in cells:
        by_sample[(c["task"], c["sample"])].add((c["method"], c["keep"]))
    want = {(c["method"], c["keep"]) for c in cells}
    done = {s for s, got in by_sample.items() if got >= want}
    rows = defaultdict(list)
    for c in cells:
        if (c["task"], c["sample"]) in done:
            rows[(c["method"], c["keep"])].append(c)
    full = rows.get(("full", 1.0), [])
    full_score = sum(c["score"] for c in full) / max(1, len(full))
    n_tasks = len({t for t, _ in done})
    lines = [
        f"# Issue 28 breadth: new scores, question unseen, {', '.join(sorted({c['model'] for c in cells}))}, "
        f"{'/'.join(str(n) for n in sorted({c['length'] for c in cells}))} tokens",
        "",
        f"{len(done)} samples ({n_tasks} tasks: {', '.join(sorted({t for t, _ in done}))}); every row on the same "
        "samples. Score: % of items right (Wilson 95% interval). Share: of the full cache's score. Bytes: KV bytes "
        "held / full (measured). Cost: compression s / prefill s of the same sample at the first keep run (the largest "
        "one, charged with the pass the keeps share), median over samples; kvgrad's includes its own gradient "
        "pass and kvzip's reconstruction pass. Each sample's prefill and compression ran in the same process (one "
        "thread; other jobs shared the 2-core machine): compare ratios, not seconds.",
        "",
        "| method | keep | score % [95% CI] | share of full | bytes / full | compress s / prefill s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    order = sorted(rows, key=lambda mk: (mk[0] != "full", -mk[1], mk[0]))
    for method, keep in order:
        group = rows[(method, keep)]
        k = sum(c["score"] for c in group)
        ci = wilson(k, len(group))
        share = f"{ci.estimate / full_score:.2f}" if full_score else "n/a"
        byts = statistics.mean(c["kv_bytes"] / c["kv_bytes_full"] for c in group)
        cost = statistics.median(
            max(cells_of(rows, method, c["task"], c["sample"]), key=lambda x: x["keep"])["compress_seconds"]
            / c["prefill_seconds"]
            for c in group
            if c["prefill_seconds"]
        )
        lines.append(
            f"| {method} | {keep} | {100 * ci.estimate:.0f} [{100 * ci.lo:.0f}, {100 * ci.hi:.0f}] | {share} | "
            f"{byts:.3f} | {cost:.2f} |"
        )
    cmd = f".venv/bin/python benchmarks/breadth/summarize.py {args.folder}"
    write_table(folder / "summary_breadth.md", lines, cmd)
    print((folder / "summary_breadth.md").read_text())


if __name__ == "__main__":
    main()
