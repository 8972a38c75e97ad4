"""Fixed-budget eviction while generating (H2O, Scissorhands, TOVA, A2SF, Keyformer at decode time).

model, tok = tokensieve.load_model()
cache = tokensieve.DecodeCache(model, "h2o", budget=256)   # never more than 256 tokens per head
out = model.generate(**tok(prompt, return_tensors="pt"), **with_cache(model, cache), max_new_tokens=2000)
cache.peak_kv_bytes()                                        # measured from the tensors' storages

A method's decode rule carries its prefill score forward one query at a time (it lives in the method's file
and the method declares it, ``Method.decode_rule``; ``DECODE_RULES`` lists the methods that have one); the
layer (``layer.py``) folds each new query's attention in and evicts the lowest-scoring unprotected slot.
"""

from __future__ import annotations

from typing import Any

from tokensieve import compat
from tokensieve.errors import BudgetError, TokenSieveError, UnknownMethodError
from tokensieve.kv.cache import CompressibleCache
from tokensieve.kv.evicting.layer import EvictingLayer, PrefillPlan
from tokensieve.kv.methods import DECODE_RULES, Method, get_method
from tokensieve.kv.methods.decode_rule import DecodeRule
from tokensieve.kv.pages import Paging
from tokensieve.kv.plan import Plan


def decode_rule(method: Method) -> DecodeRule:
    if method.id not in DECODE_RULES:
        raise UnknownMethodError(
            f"method {method.id!r} has no decode-time rule; decode eviction supports: {', '.join(DECODE_RULES)}"
        )
    return DECODE_RULES[method.id](method)


def check_decode_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise BudgetError(f"decode budget {budget!r} must be a positive integer (tokens held per KV head)")
    return budget


class DecodeCache(CompressibleCache):
    """A ``CompressibleCache`` whose full-attention layers never hold more than ``budget`` tokens per KV head
    after any forward (the prompt's own forward included); a forward's new tokens are attended before
    they are scored, so inside one forward a layer briefly holds ``budget`` + its new tokens.

    ``budget`` is None for a rule that decides its share itself (``ratio_decoding``, ``dms``; ``kept_ratio()``
    reports it). ``method`` (h2o, scissorhands, tova, a2sf, keyformer) scores the held tokens and its protected
    sinks and recent window (``Method.protected(budget)``) are never evicted. ``prefill`` (any prefill-eviction
    method id) with ``prefill_keep`` or ``prefill_budget`` compresses the prompt first, by that method's
    rule; decode eviction takes over from there. Without it, a prompt longer than the budget is cut to
    the budget by the decode method's own prefill score.
    """

    def __init__(
        self,
        model_or_config,
        method: str | Method,
        budget: int | None = None,
        *,
        prefill: str | Method | None = None,
        prefill_keep: float | None = None,
        prefill_budget: int | None = None,
        **params: Any,
    ) -> None:
        paging = Paging.pop(params)  # pages=P, page_layout=, page_agg=: evict whole pages (kv.pages)
        m = get_method(method, **params)
        rule = decode_rule(m)
        if rule.decides:  # ratio_decoding, dms: the share kept is the rule's output
            if budget is not None:
                raise BudgetError(f"{m.id} decides the share it keeps while decoding: pass no budget")
        elif budget is None:
            raise TypeError(f"decode eviction with {m.id} needs budget= (tokens held per KV head)")
        else:
            check_decode_budget(budget)
        plan = None
        if prefill is not None:
            if prefill_keep is None and prefill_budget is None and budget is None:
                raise TypeError(f"prefill={prefill!r} with {m.id} needs prefill_keep or prefill_budget")
            if prefill_keep is None and prefill_budget is None:
                prefill_budget = budget
            p = Plan.make(prefill, keep=prefill_keep, budget=prefill_budget)
            if not p.method.evicts_only:
                raise TokenSieveError(
                    f"prefill={p.method.id!r} does more than evict (it merges, quantizes or keeps heads whole), which "
                    "decode eviction cannot carry on: pass a prefill-eviction method (e.g. snapkv), or ems with "
                    "merge=False"
                )
            plan = PrefillPlan(p.method, p.keep, p.budget)
        elif prefill_keep is not None or prefill_budget is not None:
            raise TypeError("prefill_keep / prefill_budget need a prefill method")
        super().__init__(model_or_config)
        self.method, self.budget = m, budget
        sinks, window = m.protected(budget or 0)
        layers = self.sieve_layers
        for layer in layers:
            new = EvictingLayer(layer.layer_idx, rule, budget, sinks, window, len(layers), plan)
            new.paging = paging
            compat.set_cache_layer(self, layer.layer_idx, new)
        self.paging = paging

    @property
    def evicting_layers(self) -> list[EvictingLayer]:
        return [layer for layer in self.layers if isinstance(layer, EvictingLayer)]

    def state_bytes(self) -> int:
        """Bytes of the running scores (part of what the method costs in memory)."""
        return sum(layer.state_bytes() for layer in self.evicting_layers)

    def kept_ratio(self) -> float:
        """Slots held over tokens seen, mean over the full-attention layers (measured; a rule that decides its
        share reports it here)."""
        layers = [layer for layer in self.evicting_layers if layer.cumulative_length]
        return sum(layer.n_held / layer.cumulative_length for layer in layers) / max(1, len(layers))

    def peak_tokens_held(self) -> int:
        """The most slots any layer held at any moment while generating (after the prompt), per KV head."""
        return max((layer.peak_held for layer in self.evicting_layers), default=0)


__all__ = ["DECODE_RULES", "DecodeCache", "DecodeRule", "EvictingLayer", "decode_rule"]
