"""Summaries with 95% intervals and plots for question-unseen bench folders (``tokensieve bench`` output).

    .venv/bin/python benchmarks/unseen/unseen_summary.py benchmarks/unseen/results/1024 benchmarks/unseen/results/2048 \
        --out benchmarks/unseen/results/summary

Rows compare the same samples: per (task, length), the samples every kept row finished; a row with fewer than
``--min-share`` of the group's largest sample count is left out (and listed). Scores are per-sample means over
the sample's questions; intervals are bootstrap percentiles over samples (2,000 resamples, seeded), and Wilson
where every score is 0 or 1. "Mean over tasks" averages each sample index's score over the tasks (every task
weighs the same), then bootstraps over sample indices, paired with the full cache for the relative score.
kvpress cells (``--compare kvpress``) appear as ``kvpress:<press>`` on the same samples.

Writes ``unseen_summary.md`` and one plot per length (mean over tasks) plus one per (task, length): score vs
keep, one distinct stable style per method, intervals as bands, one panel per family.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

from tokensieve.plotstyle import pyplot, save, styles
from tokensieve.stats import bootstrap, paired_bootstrap, wilson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_table

FAMILIES = {
    "reconstruction": ("kvzip", "span:inner=kvzip", "mikv:importance=kvzip", "kvpress:kvzip"),
    "cheap query-agnostic": ("expected_attention", "keydiff", "lagkv", "knorm", "kvpress:"),
    "surprise and spans": ("surprise", "span:"),
    "window / positional": ("snapkv", "streaming", "tova", "h2o"),
}
B = 2000


def interval(xs: list[float], seed: int = 0) -> tuple[float, float]:
    """Wilson for 0/1 scores, else a bootstrap percentile interval of the mean."""
    if not xs:
        return 0.0, 1.0
    if all(x in (0.0, 1.0) for x in xs):
        return wilson(sum(xs), len(xs)).pair()
    return bootstrap(xs, resamples=B, seed=seed).pair()


def ratio_interval(xs: list[float], ref: list[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of mean(xs) / mean(ref), resampling the paired sample indices."""
    return paired_bootstrap(xs, ref, ratio=True, resamples=B, seed=seed).pair()


def family(method: str) -> str:
    for name, prefixes in FAMILIES.items():
        if any(method.startswith(p) for p in prefixes):
            return name
    return "other"


def label(c: dict) -> str:
    m = c["method"]
    return m if c["engine"] == "tokensieve" or m == "full" or m.startswith("kvpress:") else f"kvpress:{m}"


def load(folders: list[Path]) -> list[dict]:
    cells = []
    for f in folders:
        for line in (f / "results.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "cell" and r.get("setting") == "agnostic" and "score" in r:
                if r["engine"] == "kvpress" and r["method"] == "full":
                    continue  # the kvpress pipeline's full cache: the same model, reported once (tokensieve's)
                r["label"] = label(r)
                cells.append(r)
    return cells


def group(cells: list[dict]) -> tuple[dict[tuple, dict[int, dict]], dict[tuple, list[tuple]]]:
    """``by``: (task, length, label, keep) -> {sample: cell}; ``groups``: (task, length) -> the keys of ``by``."""
    by: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for c in cells:
        by[(c["task"], c["length"], c["label"], c["keep"])][c["sample"]] = c
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for key in by:
        groups[key[:2]].append(key)
    return by, groups


def common_samples(by: dict, keys: list[tuple], min_share: float = 0.5) -> tuple[list[tuple], list[int]]:
    """The keys with at least ``min_share`` of the group's largest sample count, and the samples all of them ran."""
    most = max(len(by[k]) for k in keys)
    kept = [k for k in keys if len(by[k]) >= min_share * most]
    return kept, sorted(set.intersection(*(set(by[k]) for k in kept)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-share", type=float, default=0.5)
    ap.add_argument("--command", action="append", default=[], help="the commands that produced the folders")
    ap.add_argument("--mean", action="append", default=[], help="comma list of tasks to average (repeatable)")
    args = ap.parse_args()
    cells = load([Path(f) for f in args.folders])
    by, groups = group(cells)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Question-unseen retrieval with 95% intervals (SmolLM2-135M-Instruct, CPU)", ""]
    lines += [f"Folders: {', '.join(args.folders)}.", ""]
    if args.command:
        lines += ["Commands:", "", *(f"    {c}" for c in args.command), ""]
    lines += [__doc__.split("\n\n", 2)[2].split("\n\nWrites")[0].replace("\n", " "), ""]
    per_length: dict[int, dict[str, dict]] = defaultdict(dict)  # length -> task -> {(label, keep): {i: score}}
    tables = []
    for (task, length), keys in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        kept, common = common_samples(by, keys, args.min_share)
        dropped = sorted({k[2] for k in keys if k not in kept})
        n = len(common)
        per_length[length][task] = {(k[2], k[3]): {s: by[k][s]["score"] for s in common} for k in kept}
        rows = []
        for k in kept:
            cs = [by[k][s] for s in common]
            xs = [c["score"] for c in cs]
            lo, hi = interval(xs)
            shares = [c["kv_bytes"] / c["kv_bytes_full"] for c in cs if c.get("kv_bytes_full")]
            byte_share = mean(shares) if shares else float("nan")  # kvpress cells do not report bytes
            rows.append((k[2], k[3], mean(xs), lo, hi, byte_share, mean(c.get("wall_seconds", 0) for c in cs)))
        rows.sort(key=lambda r: (r[0] != "full", -r[1], -r[2], r[0]))
        tables += [f"### {task}, {length} tokens, {n} samples", ""]
        if dropped:
            tables += [f"Left out (too few samples): {', '.join(dropped)}.", ""]
        tables += ["| method | keep | score | 95% CI | bytes held |", "|---|---|---|---|---|"]
        tables += [f"| {m} | {kp} | {a:.3f} | [{lo:.2f}, {hi:.2f}] | {bs:.3f} |" for m, kp, a, lo, hi, bs, _ in rows]
        tables.append("")
        name = task.replace(":", "_").replace("=", "-")
        plot(out / f"unseen_{name}_{length}.png", f"{task}, {length} tokens", n, rows)
    lines += ["## Mean over tasks", ""]
    for length, every in sorted(per_length.items()):
        for which in args.mean or [",".join(every)]:
            tasks = {t: every[t] for t in which.split(",") if t in every}
            rows = mean_over_tasks(tasks) if tasks else []
            if not rows:
                continue
            n = rows[0][-1]
            lines += [f"### {length} tokens: {', '.join(sorted(tasks))}; {n} sample indices per task", ""]
            lines += ["| method | keep | score | 95% CI | % of full | 95% CI |", "|---|---|---|---|---|---|"]
            for m, kp, a, lo, hi, rel, rlo, rhi, _ in rows:
                rel_ci = f"[{100 * rlo:.0f}, {100 * rhi:.0f}]"
                lines.append(f"| {m} | {kp} | {a:.3f} | [{lo:.2f}, {hi:.2f}] | {100 * rel:.0f}% | {rel_ci} |")
            lines.append("")
            title = f"mean over {len(tasks)} tasks, {length} tokens"
            pts = [(m, kp, a, lo, hi) for m, kp, a, lo, hi, *_ in rows]
            plot(out / f"unseen_mean_{length}_{len(tasks)}tasks.png", title, n, pts)
    lines += ["## Per task", "", *tables]
    write_table((out / "unseen_summary.md"), lines)
    print("\n".join(lines))


def mean_over_tasks(tasks: dict[str, dict]) -> list[tuple]:
    """Rows (method, keep, mean, lo, hi, share of full, lo, hi, n) over the sample indices every task has."""
    labels = set.intersection(*(set(t) for t in tasks.values()))
    if ("full", 1.0) not in labels:
        return []
    idx = sorted(set.intersection(*(set(t[("full", 1.0)]) for t in tasks.values())))
    per = {lk: [mean(t[lk][i] for t in tasks.values()) for i in idx] for lk in labels if all(
        i in t[lk] for t in tasks.values() for i in idx)}  # fmt: skip
    full = per[("full", 1.0)]
    rows = []
    for (m, kp), xs in per.items():
        lo, hi = interval(xs)
        rel = mean(xs) / mean(full) if mean(full) else float("nan")
        rlo, rhi = ratio_interval(xs, full)
        rows.append((m, kp, mean(xs), lo, hi, rel, rlo, rhi, len(idx)))
    rows.sort(key=lambda r: (r[0] != "full", -r[1], -r[2], r[0]))
    return rows


def plot(path: Path, title: str, n: int, rows: list[tuple]) -> None:
    import matplotlib.ticker

    plt = pyplot()

    methods = sorted({r[0] for r in rows if r[0] != "full"})
    full = [r for r in rows if r[0] == "full"]
    fams = [f for f in FAMILIES if any(family(m) == f for m in methods)] + (
        ["other"] if any(family(m) == "other" for m in methods) else []
    )
    fig, axes = plt.subplots(1, len(fams), figsize=(4.4 * len(fams), 3.8), sharey=True, squeeze=False)
    look = styles(methods)  # one style per method, the same in every figure
    for ax, fam in zip(axes[0], fams, strict=True):
        mine = [m for m in methods if family(m) == fam]
        for m in mine:
            pts = sorted((r[1], r[2], r[3], r[4]) for r in rows if r[0] == m)
            x = [p[0] for p in pts]
            ax.plot(x, [p[1] for p in pts], label=m, **look[m])
            ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=look[m]["color"], alpha=0.12)
        if full:
            ax.axhline(full[0][2], color="black", linewidth=1, label="full cache")
        ax.set_xscale("log")
        ax.set_xticks([0.1, 0.25, 0.5])
        ax.set_xticklabels(["0.1", "0.25", "0.5"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("keep (fraction of the context)")
        ax.set_title(fam)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    axes[0][0].set_ylabel(f"score (n={n}, 95% interval)")
    fig.suptitle(f"{title}, question unseen")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
