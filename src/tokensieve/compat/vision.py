"""ViT-family encoders: their block list, the position-encoding flag, and where a block's MLP branch runs."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch


def vision_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    # relies on a ViT encoder keeping its blocks in its longest nn.ModuleList, each called as layer(hidden_states, ...)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise TypeError(f"{type(model).__name__} has no list of encoder layers")
    return max(lists, key=len)


def takes_interpolate_pos_encoding(model: torch.nn.Module) -> bool:
    # relies on ViT/CLIP/SigLIP forwards naming the flag `interpolate_pos_encoding` (Dinov2 always interpolates)
    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters


# --- merging inside a ViT block (tokensieve.vision: ToMe, PiToMe) ---
_MLP_NORMS = ("norm2", "layernorm_after", "layer_norm2")  # Dinov2 / ViT, DeiT / CLIP, SigLIP


@dataclasses.dataclass
class MlpBranch:
    norm: torch.nn.Module  # the norm that feeds the MLP: its input is the residual stream h
    mlp: torch.nn.Module  # the MLP, or (residual_inside) its last module, called as mlp(y, h) and adding h itself
    residual_inside: bool


def vision_mlp_branch(layer: torch.nn.Module) -> MlpBranch | None:
    """Where a ViT block's MLP branch starts and ends, or None when the block has neither part."""
    # relies on pre-norm ViT-family blocks computing `h = x + attn(norm1(x)); out = h + mlp(norm2(h))`, with the
    # second norm named as in _MLP_NORMS and the MLP `mlp` (transformers 5.24's ViT, DeiT, Dinov2, CLIP, SigLIP),
    # anything elementwise after `mlp` (LayerScale, dropout, drop-path) commuting with a per-token copy; or, as
    # ViT / DeiT up to 5.4, `intermediate` then `output(y, h)`, which adds the residual h inside
    norm = next((getattr(layer, n) for n in _MLP_NORMS if isinstance(getattr(layer, n, None), torch.nn.Module)), None)
    if norm is None:
        return None
    if isinstance(getattr(layer, "mlp", None), torch.nn.Module):
        return MlpBranch(norm, layer.mlp, False)
    inside = getattr(layer, "output", None)
    if isinstance(getattr(layer, "intermediate", None), torch.nn.Module) and isinstance(inside, torch.nn.Module):
        return MlpBranch(norm, inside, True)
    return None


def with_residual(args: tuple, kwargs: dict[str, Any], residual: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    """The call of a residual-inside MLP output (``output(y, h)``, ViT / DeiT up to 5.4) with ``h`` replaced."""
    if len(args) > 1:
        return (args[0], residual, *args[2:]), kwargs
    return args, {**kwargs, "input_tensor": residual}


def call_residual(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[1] if len(args) > 1 else kwargs["input_tensor"]
