"""A prefilled context (``Prefill``): the full cache plus what the prefill observed, compressed any number of
ways without re-running it."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve import compat
from tokensieve.core.observe.capture import LayerObservation, Needs
from tokensieve.errors import ParameterError, TokenSieveError
from tokensieve.kv.budget import Allocator
from tokensieve.kv.cache import CompressibleCache
from tokensieve.kv.compressed import Compressed
from tokensieve.kv.methods import Method
from tokensieve.kv.pages import paged_kv_bytes
from tokensieve.kv.plan import Plan, compress_layer, real_length
from tokensieve.kv.scoring import prefill_inputs
from tokensieve.kv.stats import Stats


@dataclass
class Prefill:
    """A full cache plus what the prefill observed: compress it any number of ways without re-running it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    cache: CompressibleCache
    observations: dict[int, LayerObservation]
    context_ids: Tensor
    context_mask: Tensor | None
    needs: Needs
    seconds: float
    last_logits: Tensor | None = None
    hidden: Tensor | None = None  # final hidden states [B, T, d], when a method needs them (Needs.final_hidden)
    memo: dict[Any, Any] = field(default_factory=dict)  # whole-pass results, shared by the methods that reuse them

    @property
    def context_tokens(self) -> int:
        return real_length(
            self.context_mask.bool() if self.context_mask is not None else None, self.context_ids.shape[1]
        )

    def uncompressed(self) -> Compressed:
        """The uncompressed cache (a fork), as the reference row."""
        stats = Stats.measure(self.cache, self.context_tokens, self.cache.kv_bytes(), self.seconds, 0.0)
        return Compressed(
            self.model,
            self.tokenizer,
            self.cache.fork(),
            self.context_ids,
            self.context_mask,
            stats,
            "full",
            1.0,
        )

    def full(self) -> Compressed:
        """Deprecated name of ``uncompressed()`` (kept: scripts call it)."""
        warnings.warn("Prefill.full() is now Prefill.uncompressed()", DeprecationWarning, stacklevel=2)
        return self.uncompressed()

    def compress(
        self,
        method: str | Method,
        keep: float | None = None,
        budget: int | None = None,
        allocator: str | Allocator = "uniform",
        **params: Any,
    ) -> Compressed:
        """Compress a fork of the full cache with ``method`` (``keep`` or ``budget``, an ``allocator``, paging and
        the method's parameters as keywords, as in ``tokensieve.compress``)."""
        return self.compress_plan(Plan.make(method, keep=keep, budget=budget, allocator=allocator, **params))

    def compress_plan(self, plan: Plan) -> Compressed:
        """``compress`` for a ``Plan`` already made (its method, budget, allocator and paging)."""
        plan.bind(self.model)
        plan.fit_hybrid(self.cache, self.context_tokens)
        if plan.method.own_prefill:
            raise ParameterError(
                f"{plan.method.id} prefills the context itself, block by block: use tokensieve.compress / generate "
                "(or kv.compress_blocks) instead of prefill().compress()"
            )
        if plan.method.changes_prefill:
            raise TokenSieveError(
                f"{plan.method.id} changes the attention of the prefill itself, which has already run: "
                "use tokensieve.compress / generate (or SieveCache(model, ...)) instead of prefill().compress()"
            )
        start = time.perf_counter()
        inputs = prefill_inputs(self, plan.method)
        cache = self.cache.fork()
        layers = cache.sieve_layers
        budgets = plan.layer_budgets(self.context_tokens, len(layers))
        cache.paging = plan.pages
        for k, layer, (_, x) in zip(budgets, layers, inputs, strict=True):
            new = compress_layer(layer, plan.method, k, x, allocator=plan.allocator, pages=plan.pages)
            compat.set_cache_layer(cache, layer.layer_idx, new)
        plan.cut_windows(cache, self.context_mask)
        ids, mask = plan.finish(cache, self.context_ids, self.context_mask)
        seconds = time.perf_counter() - start
        full_bytes = self.cache.kv_bytes() if plan.pages is None else paged_kv_bytes(self.cache, plan.pages)
        stats = Stats.measure(cache, self.context_tokens, full_bytes, self.seconds, seconds)
        return Compressed(
            self.model,
            self.tokenizer,
            cache,
            ids,
            mask,
            stats,
            plan.method.id,
            plan.keep,
        )
