"""Token-weighting rules by id: one small file each, one entry here."""

from __future__ import annotations

from typing import Any

from tokensieve.registry import instantiate, register_family
from tokensieve.train.base import Rule
from tokensieve.train.methods.context_reliance import ContextReliance
from tokensieve.train.methods.critical import Critical
from tokensieve.train.methods.dft import DFT
from tokensieve.train.methods.excess_loss import ExcessLoss
from tokensieve.train.methods.random_drop import RandomDrop
from tokensieve.train.methods.sft import SFT
from tokensieve.train.methods.sstoken import SSToken
from tokensieve.train.methods.tshirt import TShirt

RULES: dict[str, type[Rule]] = {
    r.id: r
    for r in (SFT, ExcessLoss, SSToken, DFT, Critical, TShirt, ContextReliance, RandomDrop)  # type: ignore[type-abstract]
}
register_family(
    "token-weighted training", RULES, "a training rule: `tokensieve train --method`, tokensieve.train", __name__
)


def rule(method: str | Rule, **params: Any) -> Rule:
    """A training rule by id (``tokensieve train --method``) with parameter overrides, or the instance itself."""
    return instantiate(RULES, Rule, "training rule", method, params)


__all__ = ["DFT", "RULES", "SFT", "ContextReliance", "Critical", "ExcessLoss", "RandomDrop", "SSToken", "TShirt",
           "rule"]
