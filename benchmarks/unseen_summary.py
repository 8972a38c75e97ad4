"""Summaries with Wilson 95% intervals and plots for question-unseen bench folders (tokensieve bench output).

    .venv/bin/python benchmarks/unseen_summary.py benchmarks/results/unseen_bench [more folders...] \
        --out benchmarks/results/unseen_bench

Per (task, length, method, keep): accuracy over the samples that every method of the folder finished (so the
rows compare the same samples), its Wilson 95% interval, the mean compression seconds (the full pass counted once
per sample: memoised passes are shared by keeps) and the mean prefill seconds. Writes unseen_summary.md and
one plot per (task, length): score vs keep, one distinct, stable style per method, intervals as bands,
families in separate panels.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

FAMILIES = {
    "reconstruction": ("kvzip", "span:inner=kvzip", "mikv:importance=kvzip"),
    "cheap query-agnostic": ("expected_attention", "keydiff", "lagkv", "knorm"),
    "surprise": ("surprise", "span:inner=surprise"),
    "window / positional": ("snapkv", "streaming", "tova", "h2o"),
}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def family(method: str) -> str:
    for name, prefixes in FAMILIES.items():
        if any(method.startswith(p) for p in prefixes):
            return name
    return "other"


def load(folders: list[Path]) -> list[dict]:
    cells = []
    for f in folders:
        for line in (f / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "cell" and r.get("setting") == "agnostic" and r.get("engine") == "tokensieve":
                cells.append(r)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cells = load([Path(f) for f in args.folders])
    by = defaultdict(dict)  # (task, length, method, keep) -> {sample: cell}
    for c in cells:
        by[(c["task"], c["length"], c["method"], c["keep"])][c["sample"]] = c
    groups = defaultdict(list)
    for key in by:
        groups[key[:2]].append(key)
    out = Path(args.out)
    lines = ["# Question-unseen retrieval, Wilson 95% intervals", ""]
    lines += [f"Folders: {', '.join(args.folders)}. Samples: those every row of the (task, length) finished.", ""]
    for (task, length), keys in sorted(groups.items()):
        common = set.intersection(*(set(by[k]) for k in keys))
        n = len(common)
        lines += [f"## {task}, {length} tokens, {n} samples", ""]
        lines += ["| method | keep | score | 95% CI | compress s | prefill s |", "|---|---|---|---|---|---|"]
        rows = []
        for k in keys:
            cs = [by[k][s] for s in sorted(common)]
            if not cs:
                continue
            hits = sum(c["score"] for c in cs)
            lo, hi = wilson(hits, n)
            comp = sum(c["compress_seconds"] for c in cs) / n
            pre = sum(c["prefill_seconds"] for c in cs) / n
            rows.append((k[2], k[3], hits / n, lo, hi, comp, pre))
        rows.sort(key=lambda r: (r[0] != "full", -r[1], -r[2], r[0]))
        for m, keep, acc, lo, hi, comp, pre in rows:
            lines.append(f"| {m} | {keep} | {acc:.2f} | [{lo:.2f}, {hi:.2f}] | {comp:.2f} | {pre:.2f} |")
        lines.append("")
        plot(out / f"unseen_{task.replace(':', '_').replace('=', '-')}_{length}.png", task, length, n, rows)
    (out / "unseen_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(path: Path, task: str, length: int, n: int, rows: list[tuple]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r[0] for r in rows if r[0] != "full"})
    full = [r for r in rows if r[0] == "full"]
    fams = sorted({family(m) for m in methods})
    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 3.6), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab20").colors
    marks = "osD^vP*Xh<>"
    styles = {m: (colours[i % 20], marks[i % len(marks)], ("-", "--", ":")[i // 20 % 3]) for i, m in enumerate(methods)}
    for ax, fam in zip(axes[0], fams, strict=True):
        for m in (m for m in methods if family(m) == fam):
            pts = sorted((r[1], r[2], r[3], r[4]) for r in rows if r[0] == m)
            x = [p[0] for p in pts]
            c, mk, ls = styles[m]
            ax.plot(x, [p[1] for p in pts], color=c, marker=mk, linestyle=ls, label=m)
            ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=c, alpha=0.12)
        if full:
            ax.axhline(full[0][2], color="black", linewidth=1, label="full cache")
        ax.set_xscale("log")
        ax.set_xlabel("keep (fraction of the context)")
        ax.set_title(fam)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel(f"accuracy (n={n}, Wilson 95%)")
    fig.suptitle(f"{task}, {length} tokens, question unseen")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
