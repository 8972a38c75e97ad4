from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.attention import pool_keys
from tokensieve.kv.methods.base import Method


@dataclass
class SnapKV(Method):
    """Attention of the observation window (the last ``window`` prompt queries), summed over the window,
    averaged over each GQA group, then pooled along the keys so neighbours survive together. The window
    itself is always kept (it is the protected window)."""

    id = "snapkv"
    paper = "SnapKV: LLM Knows What You are Looking for Before Generation (Li et al., 2024)"
    rule = "sum over the last w queries of A[i, j], GQA-mean, 1-D max-pool (kernel 7); window kept"

    window: float = 32
    kernel: int = 7
    pooling: str = "max"

    def needs(self) -> Needs:
        return Needs(window=int(self.window))

    def score(self, x: ScoreInputs) -> Tensor:
        probs = x.window_probs(int(self.window))  # [B, Hkv, G, w, T]
        return pool_keys(probs.sum(3).mean(2), self.kernel, self.pooling)
