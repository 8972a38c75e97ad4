"""Eviction with per-head budgets: dense when every head keeps as many tokens, ragged otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.ops.select import rank, select

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


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
    from tokensieve.kv.cache.ragged import RaggedLayer

    return RaggedLayer.from_dense(layer, rank(scores, layer.valid, sinks, window), counts)


def head_counts(
    scores: Tensor, budget: int, valid: Tensor | None, sinks: int, window: int, allocator: Allocator | None
) -> Tensor:
    """Tokens each (row, KV head) keeps ``[B, Hkv]``: the allocator's per-head budgets, or ``budget`` (at most the
    row's real tokens)."""
    counts = None if allocator is None else allocator.head_budgets(scores, budget, valid, sinks, window)
    if counts is None:
        b, h, t = scores.shape
        real = torch.full((b,), t, device=scores.device) if valid is None else valid.sum(-1)
        counts = real.clamp(max=budget)[:, None].expand(b, h)
    return counts


def head_segments(order: Tensor, counts: Tensor, valid: Tensor | None) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """(row, head, kept, dropped) per (row, KV head): the first ``counts[b, h]`` of ``order`` (ascending) and the
    real tokens after them (padding is neither kept nor dropped)."""
    b, h, t = order.shape
    for row in range(b):
        n_real = t if valid is None else int(valid[row].sum())
        for head in range(h):
            k = min(int(counts[row, head]), n_real)
            yield row, head, order[row, head, :k].sort().values, order[row, head, k:n_real].sort().values
