"""Eviction with per-head budgets: dense when every head keeps as many tokens, ragged otherwise; and the one
per-(row, KV head) loop that builds a ragged layer from what each head keeps (merge, compensation tokens)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.ops.select import rank, select
from tokensieve.errors import BudgetError
from tokensieve.kv.cache.ragged import RaggedLayer

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
    at = {"layer_idx": layer.layer_idx} if allocator is not None and allocator.by_layer else {}  # lukv
    counts = None if allocator is None else allocator.head_budgets(scores, budget, layer.valid, sinks, window, **at)
    if counts is None or bool((counts == counts.flatten()[0]).all()):
        k = budget if counts is None else int(counts.flatten()[0])
        if k >= layer.n_held:
            return layer if inplace else layer.fork()
        return layer.evict(select(scores, k, layer.valid, sinks, window), inplace=inplace)
    return RaggedLayer.from_dense(layer, rank(scores, layer.valid, sinks, window), counts)


def evict_to_counts(layer: SieveLayer, scores: Tensor, counts: Tensor, inplace: bool = False) -> SieveLayer:
    """Keep the best ``counts[b, h]`` tokens of each head (no protection): dense when every head keeps as many,
    else ragged. How a budget spent over the whole cache at once (``global_counts``) is applied per layer."""
    if bool((counts == counts.flatten()[0]).all()):
        return evict_layer(layer, scores, int(counts.flatten()[0]), 0, 0, None, inplace)
    return RaggedLayer.from_dense(layer, rank(scores, layer.valid), counts)


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


def equal_head_budget(
    scores: Tensor, budget: int, valid: Tensor | None, sinks: int, window: int, allocator: Allocator | None, who: str
) -> int:
    """The per-head budget of a mixed-precision method, which keeps as many tokens in every head (``who`` names it):
    ``budget``, or the allocator's per-head budgets when they are all equal."""
    counts = None if allocator is None else allocator.head_budgets(scores, budget, valid, sinks, window)
    if counts is None:
        return budget
    if not bool((counts == counts.flatten()[0]).all()):
        raise BudgetError(
            f"{who} keeps the same number of high-precision tokens in every head: use the uniform, "
            "pyramid or compresskv allocator (head-adaptive budgets apply to eviction methods)"
        )
    return int(counts.flatten()[0])


def real_lengths(valid: Tensor | None, batch: int, n_tokens: int) -> list[int]:
    """The real (non-padding) tokens of each row."""
    return [n_tokens if valid is None else int(valid[row].sum()) for row in range(batch)]


def window_counts(real: list[int], windows: list[int], whole: Tensor) -> Tensor:
    """``[B, Hkv]`` tokens each head keeps: every real token in the ``whole`` heads (bool ``[Hkv]``), its row's
    window in the others."""
    heads = [bool(w) for w in whole]
    return torch.tensor(
        [[n if keep_all else min(w, n) for keep_all in heads] for n, w in zip(real, windows, strict=True)]
    )


def rank_rows(scores: Tensor, valid: Tensor | None, sinks: int, windows: list[int]) -> Tensor:
    """``rank`` ``[B, Hkv, T]`` with a protected recent window of its own per row (``windows[b]`` tokens)."""
    one = [None if valid is None else valid[r : r + 1] for r in range(len(windows))]
    return torch.cat([rank(scores[r : r + 1], one[r], sinks, w) for r, w in enumerate(windows)])


def head_segments(
    order: Tensor, counts: Tensor, valid: Tensor | None, sort_dropped: bool = True
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """(row, head, kept, dropped) per (row, KV head): the first ``counts[b, h]`` of ``order`` (ascending) and the
    real tokens after them (padding is neither kept nor dropped), ascending too unless ``sort_dropped=False``
    (then in ``order``'s order, which a mean over them sums in)."""
    b, h, t = order.shape
    for row, n_real in enumerate(real_lengths(valid, b, t)):
        for head in range(h):
            k = min(int(counts[row, head]), n_real)
            dropped = order[row, head, k:n_real]
            yield row, head, order[row, head, :k].sort().values, dropped.sort().values if sort_dropped else dropped


# (keys [T, D], values [T, D], kept, dropped, kept's source token indices) of one (row, KV head) ->
# (keys, values, source index (-1: a slot standing for no single token), logit bias) of the slots it holds
Segment = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def ragged_layer(
    layer: SieveLayer, order: Tensor, counts: Tensor, segment: Segment, sort_dropped: bool = True
) -> RaggedLayer:
    """A ragged layer built head by head: ``segment`` turns each (row, KV head)'s kept and dropped tokens
    (``head_segments``) into the slots it holds (merged slots, a compensation token, ...)."""
    keys, values, index, bias = [], [], [], []
    for row, head, kept, dropped in head_segments(order, counts, layer.valid, sort_dropped):
        src = kept if layer.token_index is None else layer.token_index[row, head, kept]
        k, v, idx, w = segment(layer.keys[row, head], layer.values[row, head], kept, dropped, src)
        keys.append(k)
        values.append(v)
        index.append(idx)
        bias.append(w)
    b, h = counts.shape
    return RaggedLayer.from_segments(layer.layer_idx, layer.cumulative_length, b, h, keys, values, index, bias)
