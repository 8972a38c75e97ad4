"""kvzip's default `scope=global` against `scope=layer` on fresh samples (issue 26: the default was chosen on the
samples it is reported on). Reads a `tokensieve bench` folder run with another `--seed`; uses only samples where
every method ran; per keep: each method's score as a share of the full cache's (paired bootstrap of the ratio) and
the paired difference global - layer (paired bootstrap over samples, both tasks pooled).

    .venv/bin/python benchmarks/unseen/scope_check.py benchmarks/unseen/results/1024_seed1 \
        --out benchmarks/unseen/results/1024_seed1/scope_check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokensieve.stats import paired_bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--methods", default="kvzip,kvzip:scope=layer,keydiff,surprise")
    p.add_argument("--out", default="")
    a = p.parse_args()
    cmd = f".venv/bin/python benchmarks/unseen/scope_check.py {a.folder} --methods {a.methods}"
    cmd += f" --out {a.out}" if a.out else ""
    cells = [json.loads(ln) for ln in Path(a.folder, "results.jsonl").read_text().splitlines() if '"cell"' in ln[:20]]
    methods = a.methods.split(",")
    score: dict[tuple[str, int, str, float], float] = {}
    for c in cells:
        score[(c["task"], c["sample"], c["method"], float(c["keep"]))] = c["score"]
    keeps = sorted({float(c["keep"]) for c in cells if c["method"] != "full"}, reverse=True)
    samples = sorted({(c["task"], c["sample"]) for c in cells})
    done = [
        s for s in samples if all((*s, m, k) in score for m in methods for k in keeps) and (*s, "full", 1.0) in score
    ]
    rows, lines = [], []
    tasks = sorted({t for t, _ in done})
    per_task = ", ".join(f"{t}: {sum(1 for x in done if x[0] == t)}" for t in tasks)
    lines += [
        f"# kvzip scope=global vs scope=layer on fresh samples ({a.folder})",
        "",
        f"Command: `{cmd}`",
        "",
        f"Samples where every method ran: {len(done)} ({per_task}).",
        "Share of the full cache's score (paired bootstrap of the ratio of means); difference global - layer in",
        "score points (paired bootstrap over samples).",
        "",
        "| keep | full cache | " + " | ".join(f"`{m}`" for m in methods) + " | global - layer (95%) |",
        "|---|---|" + "---|" * len(methods) + "---|",
    ]
    full = [score[(*s, "full", 1.0)] for s in done]
    for k in keeps:
        cols, row = [], {"keep": k, "n": len(done), "full": sum(full) / max(1, len(full))}
        for m in methods:
            xs = [score[(*s, m, k)] for s in done]
            iv = paired_bootstrap(xs, full, ratio=True)
            row[m] = [iv.estimate, iv.lo, iv.hi]
            cols.append(f"{100 * iv.estimate:.0f}% [{100 * iv.lo:.0f}, {100 * iv.hi:.0f}]")
        g = [score[(*s, "kvzip", k)] for s in done]
        lay = [score[(*s, "kvzip:scope=layer", k)] for s in done]
        d = paired_bootstrap(g, lay)
        row["global_minus_layer"] = [d.estimate, d.lo, d.hi]
        rows.append(row)
        lines.append(
            f"| {k} | {row['full']:.3f} | " + " | ".join(cols) + f" | {d.estimate:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] |"
        )
    write_results(Path(a.out or Path(a.folder) / "scope_check"), rows, lines, cmd)


if __name__ == "__main__":
    main()
