"""Table of ``run.py``'s rows: score per cell with a 95% Wilson interval, bytes, speeds, against the full cache.

    .venv/bin/python benchmarks/llamacpp_kv/summarize.py benchmarks/llamacpp_kv/results/retrieval_smollm2_2k.jsonl
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from tokensieve.stats import wilson


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["tokens"], r["cell"])].append(r)
    full = {(m, t): mean([r["score"] for r in g]) for (m, t, c), g in groups.items() if c == "f16"}
    prefill = {(m, t): mean([r["prefill_seconds"] for r in g]) for (m, t, c), g in groups.items() if c == "f16"}
    lines = [
        "| model | tokens | cell (method/aggregate/keep) | n | score | 95% CI | vs full | kept | state MB | "
        "decode tok/s | score s / prefill s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (m, t, c), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        s = [r["score"] for r in g]
        iv = wilson(sum(s), len(s))
        lo, hi = iv.lo, iv.hi
        f = full.get((m, t))
        ratio = mean(s) / f if f else float("nan")
        sc = mean([r.get("score_seconds") for r in g])
        pf = prefill.get((m, t))
        cost = f"{sc / pf:.2f}" if pf and not math.isnan(sc) else "-"
        lines.append(
            f"| {m} | {t} | {c} | {len(s)} | {mean(s):.3f} | [{lo:.2f}, {hi:.2f}] | {ratio:.2f} | "
            f"{mean([r['kept'] for r in g]):.0f} | {mean([r['state_bytes'] for r in g]) / 1e6:.2f} | "
            f"{mean([r.get('decode_tok_s') for r in g]):.1f} | {cost} |"
        )
    return lines


def longdoc_table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["tokens"], r["budget"], r["method"], r["renumber"])].append(r)
    lines = [
        "| model | document tokens | cache budget | method | renumbered | n | score | 95% CI | seconds | state MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (m, t, b, meth, ren), g in sorted(groups.items()):
        s = [r["score"] for r in g]
        iv = wilson(sum(s), len(s))
        lo, hi = iv.lo, iv.hi
        lines.append(
            f"| {m} | {t} | {b} | {meth} | {ren} | {len(s)} | {mean(s):.3f} | [{lo:.2f}, {hi:.2f}] | "
            f"{mean([r['seconds'] for r in g]):.0f} | {mean([r['state_bytes'] for r in g]) / 1e6:.2f} |"
        )
    return lines


def main() -> None:
    """Print a table per results file given (retrieval rows from run.py, long-document rows from longdoc.py)."""
    paths = [Path(a) for a in sys.argv[1:]] or sorted(Path("benchmarks/llamacpp_kv/results").glob("*.jsonl"))
    for path in paths:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        metas = [r for r in rows if r.get("type") == "meta"]
        data = [r for r in rows if r.get("type") == "row"]
        print(f"### {path.name}\n")
        if metas:
            m = metas[-1]
            print(f"command: `{m['command']}`  \ncommit {m['commit'][:10]}, llama-cpp-python {m['llama_cpp_python']}, "
                  f"torch {m['torch']}, python {m['python']}, {m['machine']}, started {metas[0]['time']}\n")
        print("\n".join(longdoc_table(data) if data and "budget" in data[0] else table(data)))
        print()


if __name__ == "__main__":
    main()
