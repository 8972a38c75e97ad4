from __future__ import annotations

from dataclasses import dataclass

from tokensieve.errors import BudgetError
from tokensieve.kv.budget.base import Allocator


@dataclass
class PerLayer(Allocator):
    """A keep ratio per layer, given by the user: ``keeps="0.9,0.5,0.25,..."`` (one per compressed layer, in
    order; a single value applies to every layer). The plan's own ``keep`` is then not used: the budgets are
    ``round(keep_l x T)`` tokens per head (at least one)."""

    id = "per_layer"
    paper = "per-layer compression ratios (kvpress PerLayerCompressionPress)"
    rule = "layer l keeps round(keep_l x T) tokens per head, keep_l given by the user"

    keeps: str = ""

    def ratios(self, n_layers: int) -> list[float]:
        try:
            values = [float(v) for v in self.keeps.split(",") if v.strip()]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= n_layers
        if len(values) != n_layers or not all(0 < v <= 1 for v in values):
            raise BudgetError(
                f"per_layer needs keeps= with one ratio in (0, 1] per compressed layer ({n_layers}), e.g. "
                f"--allocator-param keeps={','.join(['0.5'] * min(n_layers, 3))}...; got {self.keeps!r}"
            )
        return values

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        return [max(1, min(n_tokens, round(v * n_tokens))) for v in self.ratios(n_layers)]
