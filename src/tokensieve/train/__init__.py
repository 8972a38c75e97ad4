"""Token-weighted fine-tuning: losses that learn from the tokens that matter (see docs/train.md)."""

from __future__ import annotations

from typing import Any

from tokensieve.registry import instantiate, register_family
from tokensieve.train.base import SFT, Rule, TokenBatch, TrainRuleError, weighted_nll
from tokensieve.train.context_reliance import ContextReliance
from tokensieve.train.critical import Critical, critical_margin, critical_weights, token_dpo_loss
from tokensieve.train.dft import DFT, dft_loss
from tokensieve.train.excess_loss import ExcessLoss, excess_loss_weights
from tokensieve.train.loss import token_batch, token_loss
from tokensieve.train.sstoken import SSToken, sstoken_score
from tokensieve.train.tokens import token_logprobs
from tokensieve.train.tshirt import TShirt

RULES: dict[str, type[Rule]] = {
    r.id: r for r in (SFT, ExcessLoss, SSToken, DFT, Critical, TShirt, ContextReliance)  # type: ignore[type-abstract]
}

register_family("token-weighted training", RULES, "a training rule: `tokensieve train --method`, tokensieve.train")


def rule(method: str | Rule, **params: Any) -> Rule:
    """A training rule by id (``tokensieve train --method``) with parameter overrides, or the instance itself."""
    return instantiate(RULES, Rule, "training rule", method, params)


__all__ = [
    "DFT", "RULES", "SFT", "ContextReliance", "Critical", "ExcessLoss", "Rule", "SSToken", "TShirt", "TokenBatch",
    "TrainRuleError", "critical_margin", "critical_weights", "dft_loss", "excess_loss_weights", "rule",
    "sstoken_score", "token_batch", "token_dpo_loss", "token_logprobs", "token_loss", "weighted_nll",
]
