from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..observe.capture import Needs
from ..observe.stats import AttnSum
from ..score.inputs import ScoreInputs
from .base import Method


def _as_distribution(s: Tensor, valid: Tensor | None) -> Tensor:
    if valid is not None:
        s = s * valid[:, None, :]
    return s / s.sum(-1, keepdim=True).clamp(min=torch.finfo(s.dtype).tiny)


@dataclass
class EMS(Method):
    """Global-local score: global = attention accumulated over every prompt query divided by how many
    queries see the token (removing the early-token bias); local = attention from the last ``local``
    queries (which carries the recency bias). Each is normalised to a distribution per head, so neither
    bias dominates, and they are mixed with weight ``alpha`` on the global part. The evict-then-merge
    step of the paper is the ``ems`` merge in the head-adaptive issue; here the score drives eviction."""

    id = "ems"
    paper = "EMS: Adaptive Evict-then-Merge Strategy for Head-wise KV Cache Compression (2024)"
    rule = "alpha * norm(sum_i A[i, j] / #queries) + (1 - alpha) * norm(sum_{i in window} A[i, j])"

    local: int = 32
    alpha: float = 0.5

    def needs(self) -> Needs:
        return Needs(window=self.local, stats=frozenset({AttnSum()}))

    def score(self, x: ScoreInputs) -> Tensor:
        _b, _, t = x.shape
        counts = x.visible_counts(torch.arange(t, device=x.keys.device)).clamp(min=1)
        glob = x.stat(AttnSum()) / counts.unsqueeze(1)
        loc = x.window_probs(self.local).sum(3).mean(2)
        return self.alpha * _as_distribution(glob, x.valid) + (1 - self.alpha) * _as_distribution(loc, x.valid)
