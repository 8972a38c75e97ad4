"""The serving figure, labelled a simulation: requests held at once in a fixed page pool against keep (the
simulator's rows: kept pages from ``budget // P``, no prefill time, one token per running request per step), beside
the fidelity a real bench measured for the same setting (SnapKV in pages of 16: the 10 / 9-sample rerun with its
Student-t interval, and the 2-sample cells the simulator's table used). No model runs.

    .venv/bin/python benchmarks/serving_sim/serving_plot.py --sim benchmarks/serving_sim/results/smollm2.jsonl \
        --bench benchmarks/kv_pages/results_serving30 --out benchmarks/serving_sim/results/serving.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tokensieve.plotstyle import pyplot, save, style, styles
from tokensieve.stats import t_interval


def rows_of(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def plot(sim: Path, bench: Path, out: Path) -> Path:
    srows = rows_of(sim)
    full = next(r for r in srows if r["policy"] == "full")
    lines: dict[str, list[dict]] = defaultdict(list)
    for r in srows:
        if r["policy"] != "full":
            lines[f"{r['policy']} (prefill peak: {r['prefill_peak']})"].append(r)
    top1: dict[tuple[int, float], list[float]] = defaultdict(list)
    for r in rows_of(bench / "results.jsonl"):
        if r.get("type") == "cell" and r.get("kind") == "fidelity" and r["method"] != "full":
            top1[(r["length"], r["keep"])].append(100 * r["metrics"]["top1"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    look = styles(list(lines))
    ax = axes[0]
    for name, rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["keep"])
        ax.plot([r["keep"] for r in rs], [r["mean_running"] for r in rs], lw=1.6, label=name, **look[name])
    ax.axhline(full["mean_running"], label="full cache", **style("full"))
    ax.text(0.5, 0.12, "h2o and snapkv coincide: the simulator keeps the same pages for both", fontsize=7,
            transform=ax.transAxes, ha="center")  # fmt: skip
    ax.set(xlabel="keep (share of the context's pages)", ylabel="mean requests running at once",
           title="SIMULATED: requests held in one page pool", xscale="log")  # fmt: skip
    ax.set_xticks([0.1, 0.25, 0.5], ["0.1", "0.25", "0.5"])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    ax = axes[1]
    for length in sorted({n for n, _ in top1}):
        keeps = sorted(k for n, k in top1 if n == length)
        ivs = [t_interval(top1[(length, k)]) for k in keeps]
        s = style(f"snapkv:pages=16 @ {length}")
        ax.errorbar(keeps, [iv.estimate for iv in ivs], yerr=[[iv.estimate - iv.lo for iv in ivs],
                    [iv.hi - iv.estimate for iv in ivs]], capsize=3, color=s["color"], marker=s["marker"],
                    label=f"measured, {length} tokens, n={ivs[0].n} (Student-t 95%)")  # fmt: skip
    sim_q = sorted((r["keep"], 100 * r["quality"]) for r in lines.get("snapkv:pages=16 (prefill peak: all)", []))
    if sim_q:
        ax.plot(*zip(*sim_q, strict=True), ls="none", marker="o", mfc="none", color="black", ms=7,
                label="the 2-sample cells the simulation's table used")  # fmt: skip
    ax.set(xlabel="keep", ylabel="fidelity top-1 % (agreement with the full cache)", xscale="log",
           title="MEASURED quality of SnapKV in pages of 16 (bench)")  # fmt: skip
    ax.set_xticks([0.1, 0.25, 0.5], ["0.1", "0.25", "0.5"])
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("serving: a SIMULATION fed by bench quality (kept pages = budget // P, no prefill time, one token "
                 "per running request per step), not a served model", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", default="benchmarks/serving_sim/results/smollm2.jsonl")
    ap.add_argument("--bench", default="benchmarks/kv_pages/results_serving30")
    ap.add_argument("--out", default="benchmarks/serving_sim/results/serving.png")
    a = ap.parse_args()
    print(plot(Path(a.sim), Path(a.bench), Path(a.out)))


if __name__ == "__main__":
    main()
