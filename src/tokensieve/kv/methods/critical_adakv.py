from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.budget import AdaKV
from tokensieve.kv.heads import head_counts
from tokensieve.kv.methods.critical_kv import CriticalKV

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator


@dataclass
class CriticalAdaKV(CriticalKV):
    """``critical_kv`` with head-adaptive budgets: each layer's per-head counts come from one top-k of the base
    score across the layer's heads (AdaKV, with its floor), then each head runs the two-stage selection."""

    id = "critical_adakv"
    rule = "AdaKV per-head budgets from the base score, then critical_kv's two stages in each head"

    def counts(self, s: Tensor, budget: int, x: ScoreInputs, allocator: Allocator | None) -> Tensor:
        return head_counts(s, budget, x.valid, *self._inner.protected(budget), AdaKV())
