from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch


@dataclass
class SFT(Rule):
    """Plain supervised fine-tuning: every response token, weight 1 (the baseline every rule is compared to)."""

    id: ClassVar[str] = "sft"
    paper: ClassVar[str] = "baseline"
    rule: ClassVar[str] = "mean cross-entropy over all response tokens"

    def weights(self, b: TokenBatch) -> Tensor:
        return b.mask.float()
