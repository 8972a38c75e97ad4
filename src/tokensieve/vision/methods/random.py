from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.tokens import Tokens


@dataclass
class RandomPrune(VisionMethod):
    """Baseline: keep a uniformly random subset of patches (seeded, so a run is repeatable)."""

    id = "random"
    paper = "baseline"
    rule = "uniformly random patches, seeded"

    seed: int = 0

    def score(self, x: Tensor, st: Tokens) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(x.shape[0], x.shape[1] - st.n_special, generator=g).to(x.device)
