"""Tables from one or several ``explain_bench.py`` runs: per task, method and length, seconds, needle recall and the
faithfulness ratios against a random ranking, with 95% intervals from ``tokensieve.stats`` (issue 26, items 8
and 16), and the saturation of each task's target:

- seconds: Student-t over samples (``t_interval``);
- needle recall @5%: each sample's share of its needle tokens found (the tokens of one context are one cluster),
  bootstrapped over samples (``bootstrap`` of the per-sample shares); "top-1 is needle": a proportion of samples,
  Wilson (``wilson``);
- comp / suff / soft-NC against random: the method and its random rankings scored the same samples, so the
  ratio of their means gets a paired bootstrap over samples (``paired_bootstrap(ratio=True)``). The "beats
  random" column is computed from those intervals: a figure is listed only where its interval excludes 1 on
  the better side (comp and soft-NC above, suff below); "below random" where it excludes 1 on the other side.
  With 2-3 samples a bootstrap has only a handful of distinct resamples: those intervals are too narrow, and
  the n column says so;
- random comp: the random reference's mean and the spread between its draws (the mean over samples of the
  per-sample SD across ``--n-random`` draws; rows from one draw have none);
- saturation (second table, per task and length): the share of the removable score (target less its value
  with the whole context replaced) removed by the top 1% of the random rankings and of the method whose top 1%
  removes most (``saturation@1``), bootstrapped over samples. Near 1 for random, comprehensiveness cannot
  separate methods. Rows written before that figure existed have no random comp@1 and no empty-context score:
  there the method's figure is comp@1 / target (a probability's floor is 0), and random is "not recorded".

    .venv/bin/python benchmarks/explain/explain_table.py benchmarks/explain/results/faith_{512,1024,2048}
    .venv/bin/python benchmarks/explain/explain_table.py --doc docs/explain.md benchmarks/explain/results/faith_*
    .venv/bin/python benchmarks/explain/explain_table.py --plot benchmarks/explain/results/explain.png \
        benchmarks/explain/results/faith_512 benchmarks/explain/results/faith_1024 \
        benchmarks/explain/results/faith_2048 benchmarks/explain/results/speed_all

The plot: seconds against length for every method and run (each sample a dot, the mean a line: no interval is
drawn from 1-2 timings), needle recall and comprehensiveness / random per method and length (one task: the
first in the rows, or ``--task``) with the intervals above, each bar labelled with its n.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import fill_block, md_table

from tokensieve.plotstyle import pyplot, save, styles
from tokensieve.stats import Interval, bootstrap, paired_bootstrap, t_interval, wilson

# ratio columns: label and whether a higher figure is the more faithful ranking
RATIOS = {"comprehensiveness": ("comp / random", True), "sufficiency": ("suff / random", False),
          "soft_nc": ("soft-NC / random", True)}  # fmt: skip
SHORT = {"comprehensiveness": "comp", "sufficiency": "suff", "soft_nc": "soft-NC"}


def fmt(iv: Interval) -> str:
    if iv.n == 0:
        return ""
    if iv.lo != iv.lo:
        return f"{iv.estimate:.3g} (n=1)"
    return f"{iv.estimate:.3g} [{iv.lo:.3g}, {iv.hi:.3g}]"


def ratio_interval(sel: list[dict], key: str) -> Interval | None:
    """The paired bootstrap of mean(method) / mean(random) over the samples that measured ``key``."""
    pairs = [(r[key], r[f"{key}_random"]) for r in sel if key in r and f"{key}_random" in r]
    if not pairs:
        return None
    return paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs], ratio=True)


def verdict(intervals: dict[str, Interval | None]) -> str:
    """Which figures beat random (the interval excludes 1 on the better side), computed, never typed."""
    beats, below = [], []
    for key, iv in intervals.items():
        if iv is None or iv.lo != iv.lo:
            continue
        higher = RATIOS[key][1]
        if (iv.lo > 1) if higher else (iv.hi < 1):
            beats.append(SHORT[key])
        elif (iv.hi < 1) if higher else (iv.lo > 1):
            below.append(SHORT[key])
    text = ", ".join(beats) if beats else "none"
    return text + (f"; below random: {', '.join(below)}" if below else "")


def _soft_marked(sel: list[dict], cell: str) -> str:
    """Rows written before issue 26 replaced whole tokens for Soft-NC (they carry no ``soft_version``)."""
    old = any("soft_nc" in r and r.get("soft_version") != "embedding" for r in sel)
    return f"{cell} †" if cell and old else cell


def random_spread(sel: list[dict]) -> str:
    means = [r["comprehensiveness_random"] for r in sel if "comprehensiveness_random" in r]
    if not means:
        return ""
    sds = [r["comprehensiveness_random_sd"] for r in sel if r.get("comprehensiveness_random_sd", math.nan) == r.get(
        "comprehensiveness_random_sd")]  # fmt: skip
    spread = f"sd {sum(sds) / len(sds):.2g}" if sds else "1 draw"
    return f"{sum(means) / len(means):.3g} ({spread})"


def cells(sel: list[dict]) -> list[str]:
    top1 = [r["needle_top1"] for r in sel if "needle_top1" in r]
    out = [
        fmt(t_interval([r["seconds"] for r in sel])),
        fmt(bootstrap([r["needle_recall@5"] for r in sel])),
        fmt(wilson(sum(top1), len(top1))) if top1 else "",
    ]
    ivs = {k: ratio_interval(sel, k) for k in RATIOS}
    for k, iv in ivs.items():
        cell = fmt(iv) if iv is not None else ""
        out.append(_soft_marked(sel, cell) if k == "soft_nc" else cell)
    out.append(random_spread(sel))
    out.append(verdict(ivs) if any(iv is not None for iv in ivs.values()) else "")
    return out


def load(dirs: list[str]) -> list[dict]:
    rows = [json.loads(line) for d in dirs for line in (Path(d) / "rows.jsonl").read_text().splitlines() if line]
    for r in rows:
        r.setdefault("task", "niah_single")  # the only task before tasks were recorded
    return rows


def saturation(r: dict, random: bool = False) -> float:
    """Share of the removable score removed by the top 1% (see the module docstring); nan where not recorded."""
    key = "saturation@1_random" if random else "saturation@1"
    if key in r:
        return r[key]
    if random or "comp@1" not in r:
        return math.nan
    return r["comp@1"] / r["target"] if r.get("target") else math.nan


def saturation_table(rows: list[dict]) -> list[str]:
    body = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for n in sorted({r["length"] for r in rows if r["task"] == task}):
            sel = [r for r in rows if r["task"] == task and r["length"] == n and "comp@1" in r]
            if not sel:
                continue
            by_method: dict[str, list[float]] = {}
            for r in sel:
                by_method.setdefault(r["method"], []).append(saturation(r))
            best = max(by_method, key=lambda m: sum(by_method[m]) / len(by_method[m]))
            # one random reference per problem: the rows of one sample share it
            per_problem = {r["index"]: saturation(r, random=True) for r in sel}
            rand = [v for v in per_problem.values() if v == v]
            targets = [r["target"] for r in sel if r["method"] == best]
            body.append([task, n, len(per_problem), f"{sum(targets) / len(targets):.3g}",
                         fmt(bootstrap(rand)) if rand else "not recorded", best,
                         fmt(bootstrap(by_method[best]))])  # fmt: skip
    head = ["task", "tokens", "n", "target (mean)", "removed by random's top 1% (bootstrap)", "best method",
            "removed by its top 1% (bootstrap)"]  # fmt: skip
    return md_table(head, body)


def settings(rows: list[dict]) -> str:
    """The methods' parameters: their cost and recall hold at these settings only (issue 26, item 9)."""
    params = {}
    for r in rows:
        if r.get("params"):
            params.setdefault(r["method"], r["params"])
    if not params:
        return ""
    text = "; ".join(f"{m} {', '.join(f'{k}={v}' for k, v in p.items())}" for m, p in params.items())
    return f"Seconds, recall and faithfulness hold at these settings: {text}."


def table_rows(rows: list[dict]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    head = ["s (t)", "needle recall @5% (bootstrap)", "top-1 is needle (Wilson)",
            *(f"{v[0]} (paired bootstrap)" for v in RATIOS.values()), "random comp (draw spread)",
            "beats random (interval excludes 1)"]  # fmt: skip
    body = []
    for task in tasks:
        for m in methods:
            for n in lengths:
                sel = [r for r in rows if r["task"] == task and r["method"] == m and r["length"] == n]
                if sel:
                    body.append([task, m, n, len(sel), *cells(sel)])
    lines = md_table(["task", "method", "tokens", "n", *head], body)
    if any(c.endswith("†") for row in body for c in row if isinstance(c, str)):
        lines += ["", "† Soft-NC of rows written before issue 26: whole tokens replaced, not the paper's version."]
    lines += ["", "Saturation of the target (share of the removable score removed by the top 1% of a ranking):", ""]
    lines += saturation_table(rows)
    note = settings(rows)
    return ([note, ""] if note else []) + lines


def table(dirs: list[str]) -> list[str]:
    return table_rows(load(dirs))


def plot(dirs: list[str], path: Path, task: str | None = None) -> Path:
    rows = load(dirs)
    task = task or rows[0]["task"]
    faith_rows = [r for r in rows if r["task"] == task]  # speed pools the tasks, faithfulness is one task's
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    look = styles(methods)
    plt = pyplot()
    bars = [m for m in methods if any(r["method"] == m and "comprehensiveness_random" in r for r in faith_rows)]
    if bars:
        fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    else:  # a speed-only run: no empty faithfulness panels
        fig, axes = plt.subplots(1, 1, figsize=(8, 4.8), squeeze=False)
        axes = axes[0]
    ax = axes[0]
    if len(lengths) == 1:  # one length: seconds per method (a line over one x value says nothing)
        for i, m in enumerate(methods):
            xs = [r["seconds"] for r in rows if r["method"] == m]
            ax.scatter([i] * len(xs), xs, s=14, color=look[m]["color"], marker=look[m]["marker"], alpha=0.6)
            ax.hlines(sum(xs) / len(xs), i - 0.3, i + 0.3, color=look[m]["color"], lw=2)
            ax.text(i, max(xs) * 1.08, f"n={len(xs)}", ha="center", fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set(yscale="log", ylabel="seconds per explanation (1 thread)",
               title=f"speed at {lengths[0]} tokens: each sample a dot, the mean a bar")  # fmt: skip
        ax.margins(y=0.25)
    for m in methods if len(lengths) > 1 else ():
        per = {n: [r["seconds"] for r in rows if r["method"] == m and r["length"] == n] for n in lengths}
        per = {n: xs for n, xs in per.items() if xs}
        ax.scatter([n for n, xs in per.items() for _ in xs], [x for xs in per.values() for x in xs], s=12,
                   color=look[m]["color"], alpha=0.45, marker=look[m]["marker"])  # fmt: skip
        ns = sorted(per)
        params = next((r["params"] for r in rows if r["method"] == m and r.get("params")), {})
        setting = ", ".join(f"{k}={v}" for k, v in params.items())  # cost holds at these settings only
        counts = sorted({len(xs) for xs in per.values()})
        label = f"{m}{f' ({setting})' if setting else ''}, n={'-'.join(map(str, counts))}"
        ax.plot(ns, [sum(per[n]) / len(per[n]) for n in ns], lw=1.6, ms=5, label=label, **look[m])
    if len(lengths) > 1:
        ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="seconds per explanation (1 thread)",
               title="speed: each sample a dot, the mean a line")  # fmt: skip
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    width = 0.8 / len(lengths)
    shades = {n: 0.45 + 0.55 * i / max(1, len(lengths) - 1) for i, n in enumerate(lengths)}
    for ax, title, ref, stat in () if not bars else (
        (axes[1], "needle recall @ top 5% (bootstrap 95%)", None,
         lambda sel: bootstrap([r["needle_recall@5"] for r in sel])),
        (axes[2], "comprehensiveness / random (paired bootstrap 95%)", 1.0, lambda sel: paired_bootstrap(
            [r["comprehensiveness"] for r in sel], [r["comprehensiveness_random"] for r in sel], ratio=True)),
    ):  # fmt: skip
        for j, n in enumerate(lengths):
            for i, m in enumerate(bars):
                sel = [r for r in faith_rows if r["method"] == m and r["length"] == n]
                sel = [r for r in sel if "comprehensiveness_random" in r]
                if not sel:
                    continue
                iv = stat(sel)
                x = i + (j - (len(lengths) - 1) / 2) * width
                err = [[iv.estimate - iv.lo], [iv.hi - iv.estimate]] if iv.lo == iv.lo else None
                ax.bar(x, iv.estimate, width * 0.9, color=look[m]["color"], alpha=shades[n], yerr=err, capsize=2,
                       edgecolor="black", linewidth=0.4)  # fmt: skip
                ax.text(x, 0.02, f"n={len(sel)}", rotation=90, ha="center", va="bottom", fontsize=6)
        if ref is not None:
            ax.axhline(ref, color="black", ls="--", lw=1)
        ax.set_xticks(range(len(bars)), bars, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        shade = [plt.Rectangle((0, 0), 1, 1, color="grey", alpha=shades[n]) for n in lengths]
        ax.legend(shade, [f"{n} tokens" for n in lengths], fontsize=7, title="bars, left to right", title_fontsize=7)
    fig.suptitle(f"explanations on {task} (SmolLM2-135M, CPU); n <= 3 intervals are too narrow", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--doc", help="write the table into this page's <!-- generated:explain-faith --> block")
    ap.add_argument("--plot", help="write the combined figure here instead of printing the table")
    ap.add_argument("--task", help="the task whose faithfulness the plot shows (default: the first in the rows)")
    args = ap.parse_args()
    if args.plot:
        print(plot(args.dirs, Path(args.plot), args.task))
        return
    lines = table(args.dirs)
    if args.doc:
        page = Path(args.doc)
        page.write_text(fill_block(page.read_text(), "explain-faith", lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
