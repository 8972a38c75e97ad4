from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve.compat import rope_inv_freq
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.rope import unrotate_keys
from tokensieve.kv.methods.base import Method


def sketch(dim: int, width: int, seed: int) -> Tensor:
    """The Gaussian sketch ``[dim, width]`` (seeded, scaled by 1/sqrt(width))."""
    return torch.randn(dim, width, generator=torch.Generator().manual_seed(seed)) / width**0.5


def leverage_scores(keys: Tensor, valid: Tensor | None, width: int, seed: int, jitter: float) -> Tensor:
    """``[B, H, T, D]`` -> ``[B, H, T]``: x_i' (X'X)^-1 x_i for X = (keys centred over the real tokens) x sketch;
    padding rows are zero (leverage 0). The Gram matrix gets ``jitter`` x its mean diagonal before Cholesky."""
    k = keys.float()
    w = torch.ones(k.shape[0], k.shape[2], device=k.device) if valid is None else valid.float()
    w = w[:, None, :, None]
    mean = (k * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp(min=1)
    x = ((k - mean) * w) @ sketch(k.shape[-1], width, seed).to(k.device)  # [B, H, T, m]
    gram = x.transpose(-1, -2) @ x
    eye = torch.eye(width, device=k.device)
    gram = gram + jitter * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None].clamp(min=1e-12) * eye
    solved = torch.cholesky_solve(x.transpose(-1, -2), torch.linalg.cholesky(gram))  # (X'X)^-1 X'
    return (x * solved.transpose(-1, -2)).sum(-1)


@dataclass
class Leverage(Method):
    """Statistical leverage of each key among its head's keys: keys far outside the span the others fill are the
    ones a low-rank summary of the cache cannot rebuild. Pre-RoPE keys (the cached keys rotated back by their
    positions; as they are on a model without RoPE), centred over the context, are sketched to ``width`` dims by
    a seeded Gaussian matrix; the score is the leverage x_i'(X'X)^-1 x_i (Cholesky with ``jitter``)."""

    id = "leverage"
    paper = "Compactor: Calibrated Query-Agnostic KV Cache Compression with Approximate Leverage Scores (2025)"
    rule = "x_i'(X'X)^-1 x_i, X = centred pre-RoPE keys x Gaussian sketch (d x 48)"

    width: int = 48
    seed: int = 0
    jitter: float = 1e-4

    def bind(self, model: Any) -> None:
        self._inv_freq = rope_inv_freq(model)

    def score(self, x: ScoreInputs) -> Tensor:
        keys = unrotate_keys(x.keys, getattr(self, "_inv_freq", None))
        return leverage_scores(keys, x.valid, self.width, self.seed, self.jitter)
