"""Random-drop control: keep a random fraction of tokens, to separate a selection rule's effect from 'less data'."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch, top_fraction


@dataclass
class RandomDrop(Rule):
    """Weight 1 for ``keep`` of the response tokens chosen uniformly at random (over the batch, or per row),
    else 0: the control for a rule that keeps the same fraction by a score (``excess_loss`` over the batch,
    ``sstoken`` per row). The draw comes from its own generator, seeded by ``seed``, so runs repeat."""

    id: ClassVar[str] = "random_drop"
    paper: ClassVar[str] = "control (random selection at a rule's keep fraction)"
    rule: ClassVar[str] = "weight 1 for a uniformly random `keep` of the response tokens, else 0"

    keep: float = 0.6
    per_row: bool = False
    seed: int = 0
    _gen: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)

    def weights(self, b: TokenBatch) -> Tensor:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        score = torch.rand(b.mask.shape, generator=self._gen).to(b.mask.device)
        return top_fraction(score, b.mask, self.keep, per_row=self.per_row).float()
