"""Score -> budget -> evict, for one layer or a whole cache."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe.capture import observe
from tokensieve.core.observe.hooks import take_layer_input
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.memory import tensor_bytes
from tokensieve.errors import BudgetError, check_budget, check_keep
from tokensieve.kv.budget import Allocator, get_allocator
from tokensieve.kv.budget.hybrid import Hybrid
from tokensieve.kv.cache import CompressibleCache
from tokensieve.kv.cache.window import WindowLayer
from tokensieve.kv.heads import evict_layer
from tokensieve.kv.methods import Method, get_method
from tokensieve.kv.pages import Paging, check_pageable, layer_paged_bytes, page_evict_layer

if TYPE_CHECKING:
    from tokensieve.kv.cache import SieveLayer


def real_length(valid: Tensor | None, n_tokens: int) -> int:
    """The longest row's number of real (non-padding) tokens."""
    return n_tokens if valid is None else int(valid.sum(-1).max())


def check_global(method: Method, allocator: Allocator) -> None:
    """A method that spends one budget over the whole cache ignores a layer allocator: refuse it rather than mix
    the two (one global top-k per distinct layer budget is neither the allocator's split nor the global one)."""
    if method.renumbers and allocator.id != "uniform":
        raise BudgetError(f"{method.id} renumbers every layer's kept tokens alike, so every layer keeps as many: it "
                          f"takes only the uniform allocator, not {allocator.id!r}")  # fmt: skip
    if method.global_budget and allocator.id != "uniform":
        fix = "pass scope=layer to use an allocator" if any(f.name == "scope" for f in fields(method)) else ""
        raise BudgetError(
            f"{method.id} spends one budget over every layer and head and would ignore allocator {allocator.id!r}: "
            f"{fix or 'it takes only the uniform allocator'}"
        )


@dataclass
class Plan:
    """A method with its budget: ``keep`` (fraction of the context) or ``budget`` (tokens per head)."""

    method: Method
    keep: float | None = None
    budget: int | None = None
    allocator: Allocator = field(default_factory=lambda: get_allocator("uniform"))
    seconds: float = 0.0  # time spent observing and evicting inside the forward
    full_bytes: int = 0  # bytes each layer held just before its eviction (measured)
    pages: Paging | None = None  # evict whole pages (``pages=P, page_layout=, page_agg=`` keywords)
    hybrid: Hybrid = field(default_factory=Hybrid)  # keep's split between sliding and full layers (``hybrid=``)
    window_keep: int | None = None  # context tokens each sliding window keeps (None: the whole window)

    @classmethod
    def make(
        cls,
        method: str | Method,
        keep: float | None = None,
        budget: int | None = None,
        allocator: str | Allocator = "uniform",
        **params: Any,
    ) -> Plan:
        paging = Paging.pop(params)
        hybrid = Hybrid.pop(params)
        if (keep is None) == (budget is None):
            raise BudgetError("give exactly one of keep (a fraction in (0, 1]) or budget (tokens per head)")
        if keep is not None:
            check_keep(keep)
        elif not isinstance(budget, int) or budget < 1:
            raise BudgetError(f"token budget {budget!r} must be a positive integer (tokens kept per head)")
        plan = cls(get_method(method, **params), keep, budget, get_allocator(allocator), pages=paging, hybrid=hybrid)
        if paging is not None:
            check_pageable(plan.method, plan.allocator)
        check_global(plan.method, plan.allocator)
        return plan

    def mean_budget(self, n_tokens: int) -> int:
        if self.keep is not None:
            return max(1, min(n_tokens, round(self.keep * n_tokens)))
        return check_budget(self.budget, n_tokens)

    def layer_budgets(self, n_tokens: int, n_layers: int) -> list[int]:
        return self.allocator.layer_budgets(self.mean_budget(n_tokens), n_layers, n_tokens)

    def fit_hybrid(self, cache: CompressibleCache, n_tokens: int) -> Plan:
        """On a cache with sliding-window layers, ``keep`` is the share of the whole cache's slots: turn it into a
        token budget per full layer and a number of context tokens per window (``kv/budget/hybrid.py``)."""
        windows = [layer.sliding_window for layer in cache.layers if isinstance(layer, compat.SlidingLayer)]
        if self.keep is None or not windows:
            return self
        held = min(n_tokens, windows[0] - 1)  # transformers' windows hold window - 1 tokens between forwards
        full, window = self.hybrid.split(self.keep, n_tokens, len(cache.sieve_layers), len(windows), held)
        self.window_keep = None if window >= held else window
        self.keep, self.budget = (1.0, None) if full >= n_tokens else (None, full)
        return self

    def cut_windows(self, cache: CompressibleCache, context_mask: Tensor | None) -> None:
        """Keep the last ``window_keep`` context tokens in every sliding layer (after the prefill)."""
        if self.window_keep is None:
            return
        for i, layer in enumerate(cache.layers):
            if isinstance(layer, compat.SlidingLayer) and layer.is_initialized:
                compat.set_cache_layer(cache, i, WindowLayer.from_sliding(layer, i, self.window_keep, context_mask))

    def finish(self, cache: CompressibleCache, ids: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """After the whole cache is compressed: the context ``(ids, mask)`` the cache now continues from; shorter
        when the method renumbered the kept tokens to positions 0 .. n-1 (rerotate), so that generation counts n."""
        kept = self.method.finish(cache, mask)
        if kept is None:
            return ids, mask
        kept = kept.to(ids.device)
        valid = None if mask is None else mask.to(kept.device).gather(1, kept)
        return ids.gather(1, kept), valid

    def bind(self, model: Any) -> Plan:
        """Give the method and allocator the model, for what they calibrate on it (cached per model)."""
        self.method.bind(model)
        self.allocator.bind(model)
        return self

    def attach(self, cache: CompressibleCache) -> None:
        """Compress each full-attention layer right after its prefill attention (peak = one full layer)."""
        if self.method.changes_prefill:  # methods that change the prefill's attention itself install their layers
            self.method.prepare_cache(cache)
        layers = cache.sieve_layers
        budgets: list[int] = []
        cache.paging = self.pages

        def on_attention(layer: SieveLayer, query: Tensor, scaling: float) -> None:
            start = time.perf_counter()
            if not budgets:
                budgets.extend(self.layer_budgets(real_length(layer.valid, layer.n_held), len(layers)))
            if self.pages is None:
                self.full_bytes += tensor_bytes((layer.keys, layer.values))
            else:
                self.full_bytes += layer_paged_bytes(layer, self.pages)
            x_in = take_layer_input(layer.layer_idx)
            obs = observe(self.method.needs(), query, layer.keys, layer.valid, scaling, layer_input=x_in)
            k = budgets[layers.index(layer)]
            # the layer count as ``observed.layer_inputs`` counts it: the cache's full-attention layers
            x = ScoreInputs(layer.keys, layer.values, layer.valid, obs, layer.layer_idx, len(layers))
            new = compress_layer(layer, self.method, k, x, inplace=True, allocator=self.allocator, pages=self.pages)
            if new is not layer:  # another layout (ragged, mixed precision) replaces the layer
                compat.set_cache_layer(cache, layer.layer_idx, new)
            self.seconds += time.perf_counter() - start

        for layer in layers:
            layer.on_attention = on_attention


def compress_layer(
    layer: SieveLayer,
    method: Method,
    budget: int,
    x: ScoreInputs,
    inplace: bool = False,
    allocator: Allocator | None = None,
    pages: Paging | None = None,
) -> SieveLayer:
    """Compress ``layer`` to ``budget`` tokens per head by ``method``'s score (a no-op if it fits): eviction
    by default, with per-head budgets when ``allocator`` gives them; a method with its own ``act`` (merge,
    quantize, retrieval heads) decides itself; ``pages`` evicts whole pages (``kv.pages``). The result may be
    a new layer of another layout. ``x`` is what the method scores the layer from."""
    layer.on_attention = None
    if budget >= layer.n_held and not method.adaptive:
        return layer if inplace else layer.fork()
    if pages is not None:
        return page_evict_layer(layer, method, method.score(x), budget, pages, allocator, inplace)
    own = method.act(layer, x, budget, allocator, inplace)
    if own is not None:
        return own
    return evict_layer(layer, method.score(x), budget, *method.protected(budget), allocator, inplace)


class SieveCache(CompressibleCache):
    """A ``DynamicCache`` with ``SieveLayer`` for every full-attention layer; given a method it compresses the prompt
    at the end of the prefill, layer by layer: ``SieveCache(model, "snapkv", keep=0.25)`` in ``model.generate``.
    ``tokensieve.compress`` and ``tokensieve.prefill`` build one for you."""

    def __init__(
        self,
        model_or_config: Any,
        method: str | Method | None = None,
        *,
        keep: float | None = None,
        budget: int | None = None,
        allocator: str | Allocator = "uniform",
        **method_params: Any,
    ) -> None:
        super().__init__(model_or_config)
        if method is not None:
            plan = Plan.make(method, keep=keep, budget=budget, allocator=allocator, **method_params)
            if getattr(model_or_config, "config", None) is not None:
                plan.bind(model_or_config)
            plan.attach(self)
        elif keep is not None or budget is not None or method_params:
            raise TypeError("keep/budget need a method")
