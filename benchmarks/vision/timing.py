"""Images/s of each vision method as a ratio to the unpruned model, timed repeatedly so each ratio carries its
spread (issue 26: the main run timed every row once; the same setting measured 1.34x and 1.39x).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vision/timing.py --keep 0.5 --batch 8 --reps 3 \
        --out benchmarks/vision/results/timing

Rounds are interleaved: each round times the unpruned batch, then every method once, so a change in the shared
machine's load reaches every method alike. CPU seconds of the one-thread process (wall seconds on this shared
machine measure the scheduler). Per method: the ratio of the unpruned to the method's seconds in each round,
their mean, Student-t 95% interval over rounds (``tokensieve.stats.t_interval``), and min / max.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tokensieve.stats import t_interval
from tokensieve.vision.api import features, preprocess
from tokensieve.vision.data import load_photos, views
from tokensieve.vision.methods import VISION_METHODS
from tokensieve.vision.model import load_vision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import command, write_results


def cpu_seconds(vm, x: torch.Tensor, method: str | None, keep: float) -> float:
    start = time.process_time()
    if method is None:
        features(vm, x, None, dense_head=False)
    else:
        features(vm, x, method, keep, dense_head=False)
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", default=",".join(VISION_METHODS))
    p.add_argument("--out", default="benchmarks/vision/results/timing")
    a = p.parse_args()
    torch.set_num_threads(1)
    cmd = command("vision/timing.py", a)
    vm = load_vision()
    imgs = [preprocess(vm, v) for _, im in load_photos(a.batch) for v in views(im, 1)]
    x = torch.cat(imgs)[: a.batch]
    methods = a.methods.split(",")
    for m in [None, *methods]:  # warm-up, untimed
        cpu_seconds(vm, x[:1], m, a.keep)
    base: list[float] = []
    runs: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(a.reps):
        base.append(cpu_seconds(vm, x, None, 1.0))
        for m in methods:
            runs[m].append(cpu_seconds(vm, x, m, a.keep))
    rows = []
    for m in methods:
        ratios = [b / s for b, s in zip(base, runs[m], strict=True)]
        iv = t_interval(ratios)
        rows.append({
            "method": m, "keep": a.keep, "batch": a.batch, "reps": a.reps, "ips_ratio": iv.estimate,
            "ips_ratio_ci": iv.pair(), "ips_ratio_min": min(ratios), "ips_ratio_max": max(ratios),
            "ratios": ratios, "seconds": runs[m], "base_seconds": base, "command": cmd,
        })  # fmt: skip
    lines = [
        f"# Vision images/s ratio at keep {a.keep}, batch {a.batch}, {a.reps} interleaved rounds",
        "",
        f"Command: `{cmd}`",
        "",
        "CPU seconds of the one-thread process; per round the unpruned batch's seconds over the method's. "
        f"Unpruned batch: {min(base):.2f}-{max(base):.2f} CPU s over the rounds.",
        "",
        "| method | images/s ratio (mean) | 95% t-interval over rounds | min - max |",
        "|---|---:|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["ips_ratio"]):
        lo, hi = r["ips_ratio_ci"]
        lines.append(f"| {r['method']} | {r['ips_ratio']:.2f} | [{lo:.2f}, {hi:.2f}] | "
                     f"{r['ips_ratio_min']:.2f} - {r['ips_ratio_max']:.2f} |")  # fmt: skip
    write_results(Path(a.out), rows, lines)


if __name__ == "__main__":
    main()
