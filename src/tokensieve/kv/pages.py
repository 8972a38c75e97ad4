"""Page-granular eviction: the budget is spent on whole pages of ``size`` consecutive tokens, as a paged
serving engine (vLLM, SGLang, TensorRT-LLM) would have to free them.

Pages are aligned to the cache's slot positions (token ``i`` lives in page ``i // size``; for a left-padded
batch the positions are the padded ones, so exact per request at batch 1). A page's score aggregates its
real tokens' scores (``agg`` = "max" or "mean"); under ``layout="layer"`` (the engines' layout: one page
table per layer, shared by every KV head) it aggregates over the heads as well and every head keeps the
same pages; under ``layout="head"`` each KV head picks its own pages. A page with a protected token (sink
or recent window) is protected. The page being filled (the newest, when not full) is always kept: the next
token is written into it, and it keeps every row and head at the same slot count (a dense layout).
``budget`` tokens buy ``max(1, budget // size)`` pages, never more memory than token granularity.
With ``size=1`` and ``layout="head"`` the selection is ``evict.select`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve.core.ops.select import protection_mask
from tokensieve.errors import PageError

LAYOUTS = ("layer", "head")
AGGS = ("max", "mean")
KEYS = ("pages", "page_layout", "page_agg")  # the keyword names everywhere (Python, specs, CLI)


@dataclass(frozen=True)
class Paging:
    size: int = 16
    layout: str = "layer"
    agg: str = "max"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise PageError(f"page size {self.size!r} must be a positive integer (tokens per page, e.g. pages=16)")
        if self.layout not in LAYOUTS:
            raise PageError(f"page layout {self.layout!r} is unknown; choose one of: {', '.join(LAYOUTS)}")
        if self.agg not in AGGS:
            raise PageError(f"page aggregation {self.agg!r} is unknown; choose one of: {', '.join(AGGS)}")

    @classmethod
    def pop(cls, params: dict[str, Any]) -> Paging | None:
        """Take ``pages`` / ``page_layout`` / ``page_agg`` out of keyword params (None without ``pages``)."""
        size = params.pop("pages", None)
        layout, agg = params.pop("page_layout", None), params.pop("page_agg", None)
        if size is None:
            if layout is not None or agg is not None:
                raise PageError("page_layout / page_agg need pages=P (the page size in tokens)")
            return None
        return cls(size, layout or "layer", agg or "max")

    def n_pages(self, budget: int) -> int:
        return max(1, budget // self.size)

    def label(self) -> str:
        return f"pages={self.size}:page_layout={self.layout}:page_agg={self.agg}"

    def kv_bytes(self, cache: Any) -> int:
        return paged_kv_bytes(cache, self)


@dataclass
class PageChoice:
    """What an engine needs: for each (row, head or 1 for the layer layout) which page ids stay, which are freed,
    and the kept slots ``[B, Hkv, k]`` (ascending) for the dense cache."""

    kept: Tensor  # [B, H', NP] bool over page ids 0..NP-1 (pages with no slot are neither kept nor freed)
    present: Tensor  # [B, H', NP] bool: pages holding at least one slot before the choice
    slots: Tensor  # [B, Hkv, k] long

    @property
    def freed(self) -> Tensor:
        return self.present & ~self.kept


def slot_positions(token_index: Tensor | None, b: int, h: int, s: int, device=None) -> Tensor:
    """[B, Hkv, S] sequence position held by each slot."""
    if token_index is not None:
        return token_index
    return torch.arange(s, device=device).expand(b, h, s)


def _page_scores(s: Tensor, real: Tensor, page: Tensor, n_pages: int, paging: Paging) -> Tensor:
    """[B, H', NP] aggregated score of each page over its real slots (-inf for a page with none)."""
    b = s.shape[0]
    if paging.layout == "layer":  # one page table per layer: heads pooled into one row
        s, real, page = s.reshape(b, 1, -1), real.reshape(b, 1, -1), page.reshape(b, 1, -1)
    shape = (*s.shape[:2], n_pages)
    neg = torch.full(shape, float("-inf"), device=s.device)
    if paging.agg == "max":
        return neg.scatter_reduce(-1, page, s.masked_fill(~real, float("-inf")), "amax", include_self=True)
    total = torch.zeros(shape, device=s.device).scatter_add(-1, page, s.masked_fill(~real, 0.0))
    count = torch.zeros(shape, device=s.device).scatter_add(-1, page, real.float())
    return torch.where(count > 0, (total / count.clamp(min=1)).nan_to_num(nan=float("-inf")), neg)


def choose_pages(
    scores: Tensor,
    budget: int,
    valid: Tensor | None,
    sinks: int,
    window: int,
    paging: Paging,
    token_index: Tensor | None = None,
) -> PageChoice:
    """Keep the best ``paging.n_pages(budget)`` pages of each row (and head, under the head layout)."""
    b, h, n = scores.shape
    pos = slot_positions(token_index, b, h, n, scores.device)
    page = pos // paging.size
    n_pages = int(page.max()) + 1
    real = torch.ones(b, n, dtype=torch.bool, device=scores.device) if valid is None else valid
    real = real[:, None].expand(b, h, n)
    s = scores.float().nan_to_num(nan=float("-inf"))
    score = _page_scores(s, real, page, n_pages, paging)
    hp = score.shape[1]
    flat = page.reshape(b, 1, -1) if hp == 1 else page
    present = torch.zeros(b, hp, n_pages, dtype=torch.bool, device=s.device).scatter_(-1, flat, True)
    protect = protection_mask(valid, b, n, sinks, window, s.device)[:, None].expand(b, h, n)
    protect = protect.reshape(b, 1, -1) if hp == 1 else protect
    guarded = torch.zeros(present.shape, dtype=torch.long, device=s.device)
    guarded = guarded.scatter_reduce(-1, flat, protect.long(), "amax").bool()
    newest = int(pos.amax())  # every row and head shares the slot positions
    forced = torch.arange(n_pages, device=s.device) == newest // paging.size
    forced &= (newest + 1) % paging.size != 0  # the newest page is not full yet: it is being filled
    # priority: the page being filled, then protected pages, then by score; ties towards the later page
    score = score.masked_fill(guarded, float("inf")).masked_fill(~present, float("-inf"))
    prio = forced.long() * 2 + (guarded & present).long() - (~present).long() * 4
    order = n_pages - 1 - torch.argsort(score.flip(-1), dim=-1, descending=True, stable=True)
    order = order.gather(-1, torch.argsort(prio.gather(-1, order), dim=-1, descending=True, stable=True))
    k = min(paging.n_pages(budget), int(present[0, 0].sum()))
    kept = torch.zeros_like(present).scatter_(-1, order[..., :k], True) & present
    keep_slot = kept.gather(-1, flat).reshape(b, h, n) if hp == 1 else kept.gather(-1, page)
    counts = keep_slot.sum(-1)
    if not bool((counts == counts.flatten()[0]).all()):
        raise PageError("rows or heads hold pages of different sizes: page eviction needs whole-page caches throughout")
    slots = torch.argsort((~keep_slot).to(torch.uint8), dim=-1, stable=True)[..., : int(counts.flatten()[0])]
    return PageChoice(kept, present, slots)


def select_pages(
    scores: Tensor,
    budget: int,
    valid: Tensor | None,
    sinks: int,
    window: int,
    paging: Paging,
    token_index: Tensor | None = None,
) -> Tensor:
    """Indices ``[B, Hkv, k]`` (ascending) of the slots of the kept pages (``evict.select``'s contract)."""
    return choose_pages(scores, budget, valid, sinks, window, paging, token_index).slots


def pages_held(layer: Any, paging: Paging) -> Tensor:
    """[B, H'] distinct pages holding a real slot of a dense cache layer (H' = 1 for the layer layout)."""
    b, h, n = layer.keys.shape[:3]
    page = slot_positions(layer.token_index, b, h, n, layer.keys.device) // paging.size
    real = torch.ones(b, n, dtype=torch.bool, device=page.device) if layer.valid is None else layer.valid
    real = real[:, None].expand(b, h, n)
    if paging.layout == "layer":
        page, real = page.reshape(b, 1, -1), real.reshape(b, 1, -1)
    hit = torch.zeros(*page.shape[:2], int(page.max()) + 1, dtype=torch.long, device=page.device)
    return hit.scatter_reduce(-1, page, real.long(), "amax").sum(-1)


def page_bytes(layer: Any, paging: Paging) -> int:
    """Bytes of one page of this layer, from its tensors: ``size`` tokens of keys and values, for every KV head
    under the layer layout, for one head under the head layout."""
    per_token = sum(t.element_size() * t.shape[-1] for t in (layer.keys, layer.values))
    return paging.size * per_token * (layer.keys.shape[1] if paging.layout == "layer" else 1)


def layer_paged_bytes(layer: Any, paging: Paging) -> int:
    """Bytes a paged engine holds for this layer: pages held x page bytes."""
    if not layer.is_initialized or layer.keys.numel() == 0:
        return 0
    return int(pages_held(layer, paging).sum()) * page_bytes(layer, paging)


def paged_kv_bytes(cache: Any, paging: Paging) -> int:
    """A cache's KV bytes as a paged engine counts them: pages x page bytes for every compressible layer;
    other layers (sliding windows, which engines pool separately) by the bytes their tensors hold."""
    from tokensieve.core.ops.memory import tensor_bytes

    total = 0
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        if _dense(layer):
            total += layer_paged_bytes(layer, paging)
        else:
            total += tensor_bytes([layer.keys, layer.values])
    return total


def _dense(layer: Any) -> bool:
    """A dense compressible layer (ragged / quantized layouts override ``held_tensors`` and are not paged)."""
    from tokensieve.kv.cache.layers import SieveLayer  # lazy: the cache imports this package

    return isinstance(layer, SieveLayer) and type(layer).held_tensors is SieveLayer.held_tensors


def page_evict_layer(
    layer: Any, method: Any, scores: Tensor, budget: int, paging: Paging, allocator: Any = None, inplace: bool = False
) -> Any:
    """``kv.heads.evict_layer`` in whole pages. Allocators may set layer budgets, not per-head ones (a page
    table has one size per layer)."""
    check_pageable(method)
    sinks, window = method.protected(budget)
    counts = None if allocator is None else allocator.head_budgets(scores, budget, layer.valid, sinks, window)
    if counts is not None:
        if not bool((counts == counts.flatten()[0]).all()):
            raise PageError(
                f"allocator {allocator.id!r} gives KV heads different budgets, which one page table per layer cannot "
                "hold: use a layer-level allocator (uniform, pyramid) with pages="
            )
        budget = int(counts.flatten()[0])
    idx = select_pages(scores, budget, layer.valid, sinks, window, paging, layer.token_index)
    if idx.shape[-1] >= layer.n_held:
        return layer if inplace else layer.fork()
    return layer.evict(idx, inplace=inplace)


def check_pageable(method: Any, allocator: Any = None) -> None:
    """Page eviction needs a method that only scores (merging / quantizing / whole-head methods act themselves)
    and an allocator that sets layer budgets only (a page table has one size per layer)."""
    from tokensieve.kv.budget import Allocator

    if allocator is not None and type(allocator).head_budgets is not Allocator.head_budgets:
        raise PageError(
            f"allocator {allocator.id!r} gives KV heads different budgets, which one page table per layer cannot "
            "hold: use a layer-level allocator (uniform, pyramid) with pages="
        )
    if not method.evicts_only:  # declared on the Method base
        raise PageError(
            f"{method.id} does more than evict (it merges, quantizes or keeps heads whole), which page eviction "
            "cannot do: drop pages= or pick an eviction method (e.g. snapkv; ems with merge=false)"
        )
