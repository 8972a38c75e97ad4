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
    .venv/bin/python benchmarks/explain/explain_table.py --plot benchmarks/explain/results/explain.png \
        benchmarks/explain/results/faith_512 benchmarks/explain/results/faith_1024 \
        benchmarks/explain/results/faith_2048 benchmarks/explain/results/speed_all

The plot: seconds against length for every method and run (each sample a dot, the mean a line: no interval is
drawn from 1-2 timings), needle recall and comprehensiveness / random per method and length with the intervals
above, each bar labelled with its n.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import fill_block, md_table

from tokensieve.plotstyle import pyplot, save, styles
from tokensieve.stats import Interval, bootstrap, paired_bootstrap, t_interval

# soft-NC: the committed rows predate issue 26's embedding-mask Soft-NC (they replaced whole tokens), so say so
RATIOS = {"comprehensiveness": "comp / random", "sufficiency": "suff / random",
          "soft_nc": "soft-NC / random (token-replacement version)"}  # fmt: skip


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


def load(dirs: list[str]) -> list[dict]:
    return [json.loads(line) for d in dirs for line in (Path(d) / "rows.jsonl").read_text().splitlines() if line]


def table(dirs: list[str]) -> list[str]:
    rows = load(dirs)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    head = ["s (t)", "needle recall @5% (bootstrap)", *(f"{v} (paired bootstrap)" for v in RATIOS.values())]
    body = []
    for m in methods:
        for n in lengths:
            sel = [r for r in rows if r["method"] == m and r["length"] == n]
            if sel:
                body.append([m, n, len(sel), *cells(sel)])
    return md_table(["method", "tokens", "n", *head], body)


def plot(dirs: list[str], path: Path) -> Path:
    rows = load(dirs)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    look = styles(methods)
    plt = pyplot()
    bars = [m for m in methods if any(r["method"] == m and "comprehensiveness_random" in r for r in rows)]
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
                sel = [r for r in rows if r["method"] == m and r["length"] == n and "comprehensiveness_random" in r]
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
    fig.suptitle("explanations on niah_single (SmolLM2-135M, CPU); n <= 3 intervals are too narrow", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--doc", help="write the table into this page's <!-- generated:explain-faith --> block")
    ap.add_argument("--plot", help="write the combined figure here instead of printing the table")
    args = ap.parse_args()
    if args.plot:
        print(plot(args.dirs, Path(args.plot)))
        return
    lines = table(args.dirs)
    if args.doc:
        page = Path(args.doc)
        page.write_text(fill_block(page.read_text(), "explain-faith", lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
