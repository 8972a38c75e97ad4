"""``tokensieve vision``: prune or merge one image's patch tokens and report what it cost and kept."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch.nn.functional as F
from rich.console import Console

from tokensieve.errors import BudgetError
from tokensieve.spec import parse_params
from tokensieve.vision.api import features, load_image, measure_flops, preprocess
from tokensieve.vision.methods import get_vision_method
from tokensieve.vision.model import load_vision


def add_arguments(p: argparse.ArgumentParser, keep_type: Any) -> None:
    p.add_argument("--model", default="dinov2-s-focus", help="dinov2-s-focus (bundled) or a local ViT-family dir")
    p.add_argument("--method", required=True, help="tome, pitome, cls, zero_tprune, divprune, transprune, ...")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--keep", type=keep_type, help="fraction of patch tokens to keep, in (0, 1]")
    size.add_argument("--r", type=int, help="tome / pitome: tokens merged per layer")
    p.add_argument("--image", required=True, help="an image file (png, jpg, ...)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a method parameter")
    p.add_argument("--plot", help="draw the kept / merged patches into this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_vision(args: argparse.Namespace, console: Console) -> int:
    params = parse_params(args.param)
    if args.r is not None:
        if args.method not in ("tome", "pitome"):
            raise BudgetError(f"--r is ToMe's merge count; {args.method} takes --keep instead")
        if args.r < 1:
            raise BudgetError(f"--r {args.r} must be a positive number of tokens merged per layer")
        params["r"] = args.r
    keep = 1.0 if args.keep is None else args.keep
    get_vision_method(args.method, keep=keep, **params)  # fail fast on a bad method, keep or parameter
    image = load_image(args.image)
    vm = load_vision(args.model)
    x = preprocess(vm, image)
    base = features(vm, x)
    out = features(vm, x, args.method, keep, **params)
    flops = measure_flops(vm, x, args.method, keep, **params)
    base_flops = measure_flops(vm, x)
    row = {
        "method": args.method, "keep": keep, **params, "tokens_in": base.tokens_kept, "tokens_kept": out.tokens_kept,
        "flops": flops, "flops_ratio": flops / base_flops, "seconds": out.seconds, "seconds_unpruned": base.seconds,
        "cls_cosine": float(F.cosine_similarity(out.cls, base.cls).item()),
    }  # fmt: skip
    if out.saliency is not None:
        from tokensieve.vision.api import top_iou

        row["saliency_iou"] = float(top_iou(out.saliency, base.saliency).item())
    if args.plot:
        from tokensieve.vision.draw import draw_patches

        draw_patches(vm, image, [(args.method, out.state)], args.plot)
        row["plot"] = args.plot
    if args.json:
        print(json.dumps(row))
        return 0
    console.print(
        f"{args.method}: {row['tokens_kept']}/{row['tokens_in']} tokens, {row['flops'] / 1e9:.2f} GFLOPs "
        f"({row['flops_ratio']:.0%} of unpruned), {row['seconds']:.3f} s, CLS cosine {row['cls_cosine']:.4f}"
        + (f", saliency IoU {row['saliency_iou']:.3f}" if "saliency_iou" in row else "")
    )
    return 0
