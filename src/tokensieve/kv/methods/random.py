from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


@dataclass
class Random(Method):
    """A floor for comparisons: uniform random scores, seeded per layer so runs repeat."""

    id = "random"
    paper = "baseline (random eviction)"
    rule = "keep a uniformly random subset of tokens"

    seed: int = 0

    def score(self, x: ScoreInputs) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1009 + x.layer_idx)
        return torch.rand(x.shape, generator=gen).to(x.keys.device)
