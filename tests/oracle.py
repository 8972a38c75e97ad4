"""Test-only oracles: the full T x T attention matrix, written as plainly as possible."""

from __future__ import annotations

import torch
from torch import Tensor


def full_attention(q: Tensor, k: Tensor, valid: Tensor | None, scaling: float) -> Tensor:
    """A [B, H, T, T] for queries [B, H, T, D] over keys [B, Hkv, T, D] (GQA: adjacent heads share a key head)."""
    _, h, t, _ = q.shape
    kk = k.repeat_interleave(h // k.shape[1], dim=1)
    logits = (q @ kk.transpose(-1, -2)) * scaling
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, -1).nan_to_num(0.0)


def group_mean(x: Tensor, n_kv: int) -> Tensor:
    """[B, H, ...] -> [B, Hkv, ...] by the mean over each GQA group."""
    b, h = x.shape[:2]
    return x.view(b, n_kv, h // n_kv, *x.shape[2:]).mean(2)
