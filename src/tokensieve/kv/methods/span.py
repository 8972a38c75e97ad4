from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import protection_mask
from tokensieve.core.ops.spans import select_units, unit_ids
from tokensieve.errors import ParameterError
from tokensieve.kv.methods.base import Method, get_method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class Span(Method):
    """Whole-span selection with any score: ``inner`` (a method id) scores the tokens; the budget is then spent on
    whole units (``word``: whitespace-delimited, so a seven-digit code or a uuid is one unit; ``alnum``: letter and
    digit runs), each ranked by its best token, kept entirely or not at all and never over the budget (heads
    may keep a few slots fewer: a ragged layer). The inner method's protected tokens are kept, with their units.
    Units come from the tokenizer's decoded pieces, so text (or a tokenizer) is required."""

    id = "span"
    paper = "ChunkKV: Semantic-Preserving KV Cache Compression (Liu et al., 2025), at word / digit-run granularity"
    rule = "units (words, digit runs) ranked by their best token's score, kept whole while they fit the budget"
    kind: ClassVar[str] = "whole-span selection"  # a rule over another score: swept only when named

    inner: str = "kvzip"
    unit: str = "word"
    max_len: int = 32

    def __post_init__(self) -> None:
        if self.inner in (self.id, "mikv", "zipcache_quant"):
            raise ParameterError(f"inner={self.inner!r} must be a score method's id, e.g. kvzip or snapkv")
        self._inner = get_method(self.inner)

    def needs(self) -> Needs:
        return self._inner.needs() | Needs(whole_pass=True)  # the units need the context's ids and tokenizer

    def bind(self, model: Any) -> None:
        self._inner.bind(model)

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        key = ("units", self.unit, self.max_len)
        if key not in pre.memo:
            pre.memo[key] = unit_ids(pre.tokenizer, pre.context_ids, self.unit, self.max_len)
        inner = self._inner.whole_pass(pre) or {}
        return {layer.layer_idx: (pre.memo[key], inner.get(layer.layer_idx)) for layer in pre.cache.sieve_layers}

    def protected(self, budget: int) -> tuple[int, int]:
        return self._inner.protected(budget)

    def score(self, x: ScoreInputs) -> Tensor:
        _, inner_pass = x.require_pass_score()
        return self._inner.score(ScoreInputs(x.keys, x.values, x.valid, x.obs, x.layer_idx, x.n_layers, inner_pass))

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        from tokensieve.kv.cache.ragged import RaggedLayer

        units, _ = x.require_pass_score()
        scores = self.score(x).float().clone()
        b, _, t = scores.shape
        sinks, window = self.protected(budget)
        scores.masked_fill_(protection_mask(x.valid, b, t, sinks, window, scores.device)[:, None], float("inf"))
        if x.valid is not None:
            scores.masked_fill_(~x.valid[:, None], float("-inf"))
        order, counts = select_units(scores, units.to(scores.device), budget)
        if bool((counts == counts.flatten()[0]).all()):
            k = int(counts.flatten()[0])
            return layer.evict(order[..., :k].sort(-1).values, inplace=inplace)
        return RaggedLayer.from_dense(layer, order, counts)
