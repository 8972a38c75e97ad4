"""Token-weighted fine-tuning: losses that learn from the tokens that matter (see docs/train.md)."""

from __future__ import annotations

from tokensieve.train.base import Rule, TokenBatch, TrainRuleError, weighted_nll
from tokensieve.train.loss import token_batch, token_loss
from tokensieve.train.methods import (
    DFT,
    RULES,
    SFT,
    ContextReliance,
    Critical,
    ExcessLoss,
    RandomDrop,
    SSToken,
    TShirt,
    rule,
)
from tokensieve.train.methods.critical import critical_margin, critical_weights, token_dpo_loss
from tokensieve.train.methods.dft import dft_loss
from tokensieve.train.methods.excess_loss import excess_loss_weights
from tokensieve.train.methods.sstoken import sstoken_score
from tokensieve.train.tokens import token_logprobs

__all__ = [
    "DFT", "RULES", "SFT", "ContextReliance", "Critical", "ExcessLoss", "RandomDrop", "Rule", "SSToken", "TShirt",
    "TokenBatch",
    "TrainRuleError", "critical_margin", "critical_weights", "dft_loss", "excess_loss_weights", "rule",
    "sstoken_score", "token_batch", "token_dpo_loss", "token_logprobs", "token_loss", "weighted_nll",
]
