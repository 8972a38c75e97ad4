"""Rho-1: train only on the tokens whose loss exceeds a frozen reference model's loss the most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch, top_fraction


def excess_loss_weights(logp: Tensor, ref_logp: Tensor, mask: Tensor, k: float) -> Tensor:
    """1 for the top ``k`` of batch tokens by ``loss_current - loss_reference``, else 0. The reference
    already knows what is learnable, so a high excess marks a token the model can still learn; noise
    is hard for both and scores near zero."""
    excess = ref_logp - logp  # = (-logp) - (-ref_logp)
    return top_fraction(excess.detach(), mask, k, per_row=False).float()


@dataclass
class ExcessLoss(Rule):
    """Rho-1 trains its reference on clean, high-quality data first and then selects the tokens of the (noisy)
    training data by excess loss. The reference is whatever model the caller passes: the training benchmark
    fine-tunes one on a clean calibration split (disjoint from training and evaluation) and reports its cost.
    Deviation: the loop and the Trainer fall back to a frozen copy of the model being trained when no
    reference is given; that copy has learned nothing the model has not, so at step 0 every excess is 0 and
    the selection is by position, and later it drops the tokens training improved most. Selection is over the
    whole batch's tokens (the paper's top ``k`` of the batch); ``k`` 0.6 (the paper reports 60-70%)."""

    id: ClassVar[str] = "excess_loss"
    paper: ClassVar[str] = "Rho-1: Not All Tokens Are What You Need (Lin et al., 2024)"
    rule: ClassVar[str] = "weight 1 for the top k of tokens by loss_current - loss_reference, else 0"
    needs: ClassVar[frozenset[str]] = frozenset({"reference"})

    k: float = 0.6

    def weights(self, b: TokenBatch) -> Tensor:
        self.check(b)
        return excess_loss_weights(b.logp, b.ref_logp, b.mask, self.k)
