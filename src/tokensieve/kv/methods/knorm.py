from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


@dataclass
class KNorm(Method):
    """Keys with a low L2 norm draw high attention, so the score is the negative key norm."""

    id = "knorm"
    paper = "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression (Devoto et al., 2024)"
    rule = "-||k_j||_2"

    def score(self, x: ScoreInputs) -> Tensor:
        return -x.keys.float().norm(dim=-1)
