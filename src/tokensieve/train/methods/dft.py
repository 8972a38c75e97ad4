"""DFT (Dynamic Fine-Tuning): each token's cross-entropy scaled by its own detached probability."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch


def dft_loss(logp: Tensor, mask: Tensor) -> Tensor:
    """``mean_t( -log p_t * sg(p_t) )`` over response tokens: SFT's gradient reweighted by p, which
    removes the 1/p blow-up that rare (often noisy) tokens get under plain cross-entropy."""
    m = mask.float()
    return -(logp * logp.detach().exp() * m).sum() / m.sum().clamp_min(1.0)


@dataclass
class DFT(Rule):
    id: ClassVar[str] = "dft"
    paper: ClassVar[str] = "On the Generalization of SFT: ... Dynamic Fine-Tuning (Wu et al., 2025)"
    rule: ClassVar[str] = "token cross-entropy times the detached token probability"

    def weights(self, b: TokenBatch) -> Tensor:
        return b.logp.detach().exp() * b.mask

    def loss(self, b: TokenBatch) -> Tensor:
        return dft_loss(b.logp, b.mask)
