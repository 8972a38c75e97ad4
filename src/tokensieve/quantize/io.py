"""Quantized models on disk: integer codes and their grids in safetensors, loaded back fake-quantized.

``quantized.safetensors`` holds, per quantized linear, ``<name>.codes`` (uint8, one code per byte,
not bit-packed), ``<name>.scale`` and ``<name>.zero`` (per output row and group), and the residual
rotation ``rotation`` (float64) when there was one; its metadata holds the recipe and the base model.
Everything else is the base model's, so loading rebuilds it: load the base model, re-apply the same
rotation (a deterministic transform), and set each linear to its dequantized codes. The loaded model
computes in float32 with weights exactly on the quantization grid ("fake quantization"): it measures
quality, not memory or speed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tokensieve.errors import ModelNotFoundError, ParameterError
from tokensieve.quantize.engine import QuantResult
from tokensieve.quantize.gptq import Quantized
from tokensieve.quantize.rotate import rotate
from tokensieve.quantize.run import Recipe

FILE = "quantized.safetensors"


def save(out: str | Path, model_name: str, recipe: Recipe, result: QuantResult, rotation: Tensor | None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, q in result.layers.items():
        tensors[f"{name}.codes"] = q.codes.contiguous()
        tensors[f"{name}.scale"] = q.scale.contiguous()
        tensors[f"{name}.zero"] = q.zero.contiguous()
    if rotation is not None:
        if result.placement not in ("stream", "inputs"):
            raise ParameterError("a rotated model needs its placement to load back: set result.placement")
        tensors["rotation"] = rotation.contiguous()
    meta = {
        "model": model_name,
        "recipe": json.dumps(asdict(recipe.resolved())),
        "bits": str(result.spec.bits),
        "group": str(result.spec.group),
        "seconds": f"{result.seconds:.2f}",
        "placement": result.placement,
        "format": "tokensieve-quantized-v1",
    }
    save_file(tensors, str(out / FILE), metadata=meta)
    return out / FILE


def load(path: str | Path, base: nn.Module | None = None) -> tuple[nn.Module, object, dict[str, str]]:
    """(model with dequantized weights, tokenizer, metadata) from a directory ``save`` wrote. ``base``: the
    full-precision model to load into (in place; tokenizer None), instead of loading the recorded one."""
    from safetensors import safe_open

    from tokensieve.runtime.models import load_model

    file = Path(path) / FILE
    if not file.exists():
        raise ModelNotFoundError(f"{file} does not exist: pass the --out directory of `tokensieve quantize`")
    with safe_open(str(file), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(file))
    model, tok = (base, None) if base is not None else load_model(meta["model"])
    if "rotation" in tensors:
        # files written before placements existed rotated the stream
        rotate(model, q=tensors["rotation"], placement=meta.get("placement") or "stream")
    bits = int(meta["bits"])
    names = sorted({k.rsplit(".", 1)[0] for k in tensors if k != "rotation"})
    with torch.no_grad():
        for name in names:
            codes, scale = tensors[f"{name}.codes"], tensors[f"{name}.scale"]
            group = codes.shape[1] // scale.shape[1]
            q = Quantized(codes, scale, tensors[f"{name}.zero"], bits, group)
            lin = model.get_submodule(name)
            lin.weight.copy_(q.dequantize().to(lin.weight.dtype))
    return model, tok, meta
