"""One SmolLM2 linear: GPTQ vs RTN loss tr(dW H dW^T) per token, on the calibration Hessian and on held-out text
of two domains (the essays; other topics of the calibration's own Python docs).

OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/quant/quant_heldout_layer.py --layer 5 --linear mlp.down_proj
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from tokensieve.quantize.data import calibration_windows, evaluation_windows
from tokensieve.quantize.gptq import Hessian, QuantSpec, gptq, layer_loss, rtn
from tokensieve.runtime.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import print_provenance


class _Stop(Exception):
    pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--linear", default="mlp.down_proj")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model("smollm2")
    lin = model.model.layers[a.layer].get_submodule(a.linear)

    def hessian(windows: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
        h = Hessian(lin.in_features)

        def pre(module: torch.nn.Module, args: tuple) -> None:
            h.add(args[0])
            raise _Stop  # nothing after this linear is needed

        handle = lin.register_forward_pre_hook(pre)
        with torch.no_grad():
            for ids in windows:
                with contextlib.suppress(_Stop):
                    model(input_ids=ids, use_cache=False)
        handle.remove()
        return h.h, h.tokens

    held = {d: hessian(evaluation_windows(tok, 4, 512, domain=d)) for d in ("prose", "docs")}
    spec = QuantSpec(a.bits, a.group)
    w = lin.weight.detach()
    r = rtn(w, spec).dequantize()
    for n, t in [(4, 256), (16, 512), (32, 512)]:
        cal, n_cal = hessian(calibration_windows(tok, n, t, 0))
        g = gptq(w, cal, spec).dequantize()
        cal_r, cal_g = layer_loss(w, r, cal) / n_cal, layer_loss(w, g, cal) / n_cal
        outs = " | ".join(
            f"held-out {d} ({n_h} tokens) rtn {layer_loss(w, r, h) / n_h:.4f} gptq {layer_loss(w, g, h) / n_h:.4f}"
            for d, (h, n_h) in held.items()
        )
        print(
            f"layer {a.layer} {a.linear}, {n_cal} calibration tokens: calibration loss rtn {cal_r:.4f} gptq {cal_g:.4f}"
            f" | {outs}",
            flush=True,
        )
    print_provenance()


if __name__ == "__main__":
    main()
