"""The vision benchmark's measurement (run by ``vision_bench.py``): every vision method at several keep ratios
on DINOv2-S, CPU.

Per (method, keep): measured FLOPs (torch's flop counter) and images/s at batch 32 as ratios to the
unpruned model timed in the same run; CLS-feature cosine to the unpruned model and view-retrieval top-1
on real photos in deterministic views; saliency-map fidelity (IoU of the top-20% pixels, MAE); and a
Fashion-MNIST linear probe trained on unpruned features, evaluated on pruned ones.
Intervals: views of one photo resample together (``tokensieve.stats.clustered_bootstrap``); the probe's test
images are independent (Wilson). Rows go to a JSONL file as they finish
(rerunning skips done rows); summary.md and plots are rebuilt from it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from tokensieve.stats import clustered_bootstrap, wilson
from tokensieve.vision.api import features, measure_flops, preprocess, top_iou
from tokensieve.vision.data import fashion, load_photos, views
from tokensieve.vision.methods import VISION_METHODS
from tokensieve.vision.model import DEFAULT_VISION_MODEL, VisionModel, load_vision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import stamp

KEEPS = (0.5, 0.35, 0.25, 0.75)
REPS = 3  # timed batches per row and per unpruned timing


def retrieval_hits(feats: torch.Tensor, owner: list[int]) -> list[int]:
    """Per view: 1 if its nearest other view (cosine) shows the same photo."""
    f = F.normalize(feats, dim=-1)
    sim = f @ f.T
    sim.fill_diagonal_(-2)
    nn = sim.argmax(1)
    return [int(owner[i] == owner[int(j)]) for i, j in enumerate(nn)]


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int = 10) -> Any:
    """Multinomial logistic regression (standardised features, L2), by L-BFGS."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    xs = (x - mu) / sd

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (((z - mu) / sd) @ w + b).argmax(1)


def _batched(vm: VisionModel, px: torch.Tensor, method: str | None, batch: int = 12, dense_head: bool = True,
             **kw: Any):  # fmt: skip
    outs = [features(vm, px[i : i + batch], method, dense_head=dense_head, **kw) for i in range(0, len(px), batch)]
    cls = torch.cat([o.cls for o in outs])
    sal = torch.cat([o.saliency for o in outs]) if outs[0].saliency is not None else None
    return cls, sal, outs[0].tokens_kept


class Bench:
    def __init__(self, vm: VisionModel, photos: int, n_views: int, probe_train: int, probe_test: int) -> None:
        self.vm = vm
        pics = load_photos(photos)
        self.names = [n for n, _ in pics]
        imgs, self.owner = [], []
        for i, (_, im) in enumerate(pics):
            for v in views(im, n_views):
                imgs.append(preprocess(vm, v))
                self.owner.append(i)
        self.px = torch.cat(imgs)
        fx, self.fy = fashion("train", probe_train)
        tx, self.ty = fashion("t10k", probe_test)
        self.fashion_train = torch.cat([preprocess(vm, im) for im in fx])
        self.fashion_test = torch.cat([preprocess(vm, im) for im in tx])
        self.base_cls, self.base_sal, _ = _batched(vm, self.px, None)
        train_cls, _, _ = _batched(vm, self.fashion_train, None, dense_head=False)
        self.probe = fit_probe(train_cls, torch.as_tensor(self.fy, dtype=torch.long))
        self.base_flops = measure_flops(vm, self.px[:1])
        self.base_times: list[float] = []

    def time_batch(self, method: str | None, reps: int = REPS, **kw: Any) -> list[float]:
        x = self.px[:32] if len(self.px) >= 32 else self.px.repeat(math.ceil(32 / len(self.px)), 1, 1, 1)[:32]
        features(self.vm, x[:2], method, dense_head=False, **kw)  # warm-up; the backbone only, as FLOPs
        # CPU seconds of this (one-thread) process, not wall seconds: on a machine shared with other jobs the
        # wall clock mostly measures how long the scheduler kept us waiting; CPU time is what one core needs.
        # Several runs, so a row's ratio carries its own spread (one run per row measured 1.34x and 1.39x)
        runs = []
        for _ in range(reps):
            start = time.process_time()
            features(self.vm, x, method, dense_head=False, **kw)
            runs.append(time.process_time() - start)
        return runs

    def time_base(self) -> None:
        self.base_times.extend(self.time_batch(None))

    def row(self, method: str, keep: float, timed: bool = True, **kw: Any) -> dict[str, Any]:
        start = time.perf_counter()
        cls, sal, kept = _batched(self.vm, self.px, method, keep=keep, **kw)
        cos = F.cosine_similarity(cls, self.base_cls).numpy()
        hits = retrieval_hits(cls, self.owner)
        test_cls, _, _ = _batched(self.vm, self.fashion_test, method, dense_head=False, keep=keep, **kw)
        correct = int((self.probe(test_cls) == torch.as_tensor(self.ty)).sum())
        flops = measure_flops(self.vm, self.px[:1], method, keep=keep, **kw)
        runs = self.time_batch(method, keep=keep, **kw) if timed else []
        if timed and not self.base_times:
            self.time_base()
        base_s = float(np.mean(self.base_times)) if self.base_times else float("nan")
        seconds = float(np.mean(runs)) if runs else float("nan")
        # each timed batch's ratio to the mean unpruned batch; their spread (min, max) goes beside the mean
        ratios = [base_s / r for r in runs]
        n, m = len(self.owner), len(self.ty)
        out = {
            "method": method, "keep": keep, **kw, "tokens_in": self.px.shape[-1] ** 2 // self.vm.patch_size**2 + 1,
            "tokens_kept": kept, "flops": flops, "flops_ratio": flops / self.base_flops,
            "ips_ratio": base_s / seconds, "ips_ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "batch32_seconds": seconds, "batch32_runs": runs, "base_batch32_seconds": base_s,
            "base_batch32_runs": list(self.base_times),
            # views of one photo are not independent: intervals resample photos (clustered bootstrap)
            "cls_cosine": float(cos.mean()), "cls_cosine_ci": clustered_bootstrap(cos.tolist(), self.owner).half,
            "cls_cosine_min": float(cos.min()), "retrieval_top1": sum(hits) / n,
            "retrieval_ci": clustered_bootstrap(hits, self.owner).pair(),
            "probe_acc": correct / m, "probe_ci": wilson(correct, m).pair(), "n_views": n, "n_probe": m,
            "per_view_cos": [round(float(c), 6) for c in cos], "per_view_hit": hits, "owner": self.owner,
        }  # fmt: skip
        if sal is not None:
            out["saliency_iou"] = float(top_iou(sal, self.base_sal).mean())
            out["saliency_mae"] = float((sal - self.base_sal).abs().mean())
        out["wall_s"] = time.perf_counter() - start
        return out

    def unpruned(self) -> dict[str, Any]:
        n, m = len(self.owner), len(self.ty)
        hits = retrieval_hits(self.base_cls, self.owner)
        test_cls, _, _ = _batched(self.vm, self.fashion_test, None, dense_head=False)
        correct = int((self.probe(test_cls) == torch.as_tensor(self.ty)).sum())
        return {
            "method": "none", "keep": 1.0, "tokens_kept": self.px.shape[-1] ** 2 // self.vm.patch_size**2 + 1,
            "flops": self.base_flops, "flops_ratio": 1.0, "ips_ratio": 1.0, "cls_cosine": 1.0,
            "retrieval_top1": sum(hits) / n, "retrieval_ci": clustered_bootstrap(hits, self.owner).pair(),
            "probe_acc": correct / m, "probe_ci": wilson(correct, m).pair(), "saliency_iou": 1.0, "saliency_mae": 0.0,
            "n_views": n, "n_probe": m, "per_view_hit": hits, "owner": self.owner,
            "photos": self.names,
        }  # fmt: skip

    def r_matching(self, flops_ratio: float) -> int:
        """ToMe's constant r whose measured FLOPs come closest to ``flops_ratio`` of the unpruned model."""
        lo, hi = 1, (self.px.shape[-1] // self.vm.patch_size) ** 2 // 2
        best = (1.0, 1)
        while lo <= hi:
            r = (lo + hi) // 2
            ratio = measure_flops(self.vm, self.px[:1], "tome", r=r) / self.base_flops
            best = min(best, (abs(ratio - flops_ratio), r))
            lo, hi = (r + 1, hi) if ratio > flops_ratio else (lo, r - 1)
        return best[1]


def recount_flops(out_dir: Path, model: str = DEFAULT_VISION_MODEL) -> None:
    """Measure every row's FLOPs again (backbone only) and rewrite the JSONL files in place."""
    vm = load_vision(model)
    x = preprocess(vm, load_photos(1)[0][1])
    base = measure_flops(vm, x)
    for path in sorted(out_dir.glob("results*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            kw = {"r": r["r"]} if r.get("r") else {}
            r["flops"] = base if r["method"] == "none" else measure_flops(vm, x, r["method"], r["keep"], **kw)
            r["flops_ratio"] = r["flops"] / base
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _key(row: dict[str, Any]) -> str:
    return f"{row['method']}|{row['keep']}|{row.get('r')}"


def run(
    out_dir: Path, model: str = DEFAULT_VISION_MODEL, methods: list[str] | None = None, keeps=KEEPS,
    photos: int = 12, n_views: int = 3, probe_train: int = 120, probe_test: int = 60, console: Console | None = None,
    timed_keeps: tuple[float, ...] | None = None, tag: str = "",
) -> list[dict[str, Any]]:  # fmt: skip
    console = console or Console(stderr=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"results{tag}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {_key(r) for r in rows}
    vm = load_vision(model)
    bench = Bench(vm, photos, n_views, probe_train, probe_test)

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        done.add(_key(row))
        with path.open("a") as f:
            f.write(json.dumps(stamp(row)) + "\n")
        console.print(
            f"{row['method']:12s} keep={row['keep']:<5} r={row.get('r')} flops={row['flops_ratio']:.3f} "
            f"ips={row['ips_ratio']:.2f} cos={row['cls_cosine']:.4f} ret={row['retrieval_top1']:.3f} "
            f"probe={row['probe_acc']:.3f} iou={row.get('saliency_iou', float('nan')):.3f}"
        )

    if "none|1.0|None" not in done:
        emit(bench.unpruned())
    methods = methods or list(VISION_METHODS)
    for keep in keeps:
        timed = timed_keeps is None or keep in timed_keeps
        # images/s: each keep's rows against unpruned batches timed in the same stretch of the run (at its
        # start and after every 4 rows), so a change in the shared machine's load shifts both sides alike
        bench.base_times = []
        count = 0
        for m in methods:
            if f"{m}|{keep}|None" in done:
                continue
            if timed and count % 4 == 0:
                bench.time_base()
            emit(bench.row(m, keep, timed=timed))
            count += 1
        if "tome" in methods and "cls" in methods:
            target = next(r for r in rows if r["method"] == "cls" and r["keep"] == keep)["flops_ratio"]
            r = bench.r_matching(target)
            if f"tome|{keep}|{r}" not in done:
                row = bench.row("tome", keep, timed=timed_keeps is None or keep in timed_keeps, r=r)
                row["matched_to"] = f"cls@{keep}"
                emit(row)
    return rows
