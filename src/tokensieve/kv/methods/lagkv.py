from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


def lag_scores(x: Tensor, lag: int) -> Tensor:
    """[B, H, T, D] -> [B, H, T]: each full chunk of ``lag`` tokens min/max-normalised per channel by the *next*
    chunk, std over channels, softmax within the chunk; tokens without a full next chunk get +inf (kept)."""
    b, h, t, d = x.shape
    n = t // lag - 1  # chunks that have a full next chunk
    out = torch.full((b, h, t), float("inf"), device=x.device)
    if n <= 0:
        return out
    c = x[:, :, : (n + 1) * lag].float().reshape(b, h, n + 1, lag, d)
    lo, hi = c[:, :, 1:].amin(3, keepdim=True), c[:, :, 1:].amax(3, keepdim=True)
    norm = (c[:, :, :-1] - lo) / (hi - lo).clamp(min=1e-6)
    out[:, :, : n * lag] = norm.std(-1).softmax(-1).reshape(b, h, n * lag)
    return out


@dataclass
class LagKV(Method):
    """Lag-relative statistics: the context is cut into chunks of ``lag`` tokens; each chunk's keys and values are
    normalised by the per-channel min and max of the chunk after it (the "lag" reference), and a token scores by
    the spread (std over channels) of its normalised key plus that of its value, each softmaxed within its chunk
    so that every chunk competes on the same scale. The trailing tokens without a full reference chunk are kept,
    as are ``sinks`` first tokens (the paper's sink)."""

    id = "lagkv"
    paper = "LagKV: Lag-Relative Information of the KV Cache Tells Which Tokens Are Important (Liang et al., 2025)"
    rule = "chunks of L normalised by the next chunk's min/max; std over channels of k and v, softmax per chunk"

    sinks: int = 4
    lag: int = 128

    def score(self, x: ScoreInputs) -> Tensor:
        return lag_scores(x.keys, self.lag) + lag_scores(x.values, self.lag)
