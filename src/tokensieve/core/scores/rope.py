"""Rotary position embedding on small tensors (rotate-half layout, as HF's Llama-family models apply it)."""

from __future__ import annotations

import torch
from torch import Tensor


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """RoPE of ``x [..., D]`` by ``angles [..., D/2]`` (broadcast): channel pair (c, c + D/2) turned by its angle."""
    cos, sin = angles.cos().repeat(*[1] * (angles.dim() - 1), 2), angles.sin().repeat(*[1] * (angles.dim() - 1), 2)
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat([-b, a], -1) * sin


def move(x: Tensor, shift: Tensor, inv_freq: Tensor | None) -> Tensor:
    """Vectors ``x [B, H, T, D]`` rotated by ``shift [T]`` (or ``[B, T]``) positions; unchanged without RoPE
    (``inv_freq`` None). ``shift = -arange(T)`` takes cached keys back to their pre-RoPE values."""
    if inv_freq is None:
        return x
    angles = shift.float().to(x.device)[..., None] * inv_freq.to(x.device)  # [T, D/2] or [B, T, D/2]
    return rotate(x, angles.unsqueeze(1) if angles.dim() == 3 else angles)


def unrotate_keys(keys: Tensor, inv_freq: Tensor | None) -> Tensor:
    """Pre-RoPE keys ``[B, Hkv, T, D]`` from cached ones: slot j was rotated by position j (the prefill's
    positions are the slot indices, padding included)."""
    return move(keys.float(), -torch.arange(keys.shape[2]), inv_freq)


def mean_rotation(x: Tensor, start: int, horizon: int, inv_freq: Tensor | None) -> Tensor:
    """``x [..., D]`` rotated by the mean RoPE rotation over positions ``start .. start + horizon - 1`` (the mean
    of the rotated vectors: the anchor of a query that may land at any of those positions)."""
    if inv_freq is None or horizon <= 0:
        return x
    angles = torch.arange(start, start + horizon).float()[:, None] * inv_freq
    cos, sin = angles.cos().mean(0).repeat(2).to(x.device), angles.sin().mean(0).repeat(2).to(x.device)
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat([-b, a], -1) * sin
