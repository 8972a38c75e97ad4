"""Eviction with per-head budgets: dense when every head keeps as many tokens, ragged otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .evict import rank, select

if TYPE_CHECKING:
    from ..budget import Allocator
    from ..cache import SieveLayer


def evict_layer(
    layer: SieveLayer,
    scores: Tensor,
    budget: int,
    sinks: int,
    window: int,
    allocator: Allocator | None = None,
    inplace: bool = False,
) -> SieveLayer:
    """Keep each head's best tokens: ``budget`` per head, or what ``allocator.head_budgets`` gives each head.
    Equal counts keep the dense layout (with padding slots masked, as before); unequal counts build a
    ``RaggedLayer`` that holds only real tokens."""
    counts = None if allocator is None else allocator.head_budgets(scores, budget, layer.valid, sinks, window)
    if counts is None or bool((counts == counts.flatten()[0]).all()):
        k = budget if counts is None else int(counts.flatten()[0])
        if k >= layer.n_held:
            return layer if inplace else layer.fork()
        return layer.evict(select(scores, k, layer.valid, sinks, window), inplace=inplace)
    from ..cache.ragged import RaggedLayer

    return RaggedLayer.from_dense(layer, rank(scores, layer.valid, sinks, window), counts)
