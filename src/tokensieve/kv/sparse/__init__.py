"""Sparse retrieval decoding: the cache is kept whole, each decode step reads only part of it.

model, tok = tokensieve.load_model()
cache = tokensieve.SparseCache(model, "quest", read=1 / 8, measure=True)
out = model.generate(**tok(prompt, return_tensors="pt"), **with_cache(model, cache), max_new_tokens=64)
cache.report()     # per-step fraction of the cache read, recall / IoU against the exact top-k, mass

Selection functions are pure (``select.py``); a method (one file each) turns a decode query into slot
scores, and ``SparseLayer`` reads the top ones and runs exact attention over them.
"""

from __future__ import annotations

import copy
from typing import Any

from tokensieve import compat
from tokensieve.errors import BudgetError
from tokensieve.kv.cache import CompressibleCache
from tokensieve.kv.sparse.base import SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.double_sparsity import DoubleSparsity
from tokensieve.kv.sparse.fasa import FASA
from tokensieve.kv.sparse.hisa import HISA
from tokensieve.kv.sparse.layer import Meter, SparseLayer
from tokensieve.kv.sparse.lserve import LServe
from tokensieve.kv.sparse.quest import Quest
from tokensieve.kv.sparse.tidal import TidalDecode
from tokensieve.kv.sparse.token_sparse import TokenSparse
from tokensieve.kv.sparse.tokenselect import TokenSelect
from tokensieve.registry import instantiate, register_family

SPARSE: dict[str, type[SparseMethod]] = {
    cls.id: cls for cls in (Quest, TokenSelect, TidalDecode, DoubleSparsity, FASA, HISA, TokenSparse)
}
register_family(
    "sparse decoding",
    SPARSE,
    "a sparse-decoding method: use tokensieve.decode or SparseCache",
    __name__,
)
# issue 28 (breadth)
SPARSE.update({cls.id: cls for cls in (LServe,)})


def get_sparse(method: str | SparseMethod, **params: Any) -> SparseMethod:
    return instantiate(SPARSE, SparseMethod, "sparse-decoding method", method, params)


def check_read(read: Any) -> float | int:
    """A read budget: a fraction of the held tokens in (0, 1], or a token count >= 1."""
    if isinstance(read, bool) or not isinstance(read, int | float):
        raise BudgetError(f"read budget {read!r} must be a fraction in (0, 1] or a positive token count")
    if isinstance(read, int):
        if read < 1:
            raise BudgetError(f"read budget {read} must be a positive token count (or a fraction in (0, 1])")
        return read
    if not 0.0 < read <= 1.0:
        raise BudgetError(f"read budget {read!r} is outside (0, 1]: pass e.g. read=0.125 to read 1/8 of the cache")
    return float(read)


class SparseCache(CompressibleCache):
    """A ``CompressibleCache`` whose full-attention layers keep every token and read ``read`` of them per decode
    step (a fraction of the held tokens, e.g. 1/8, or a token count). ``measure=True`` also computes the
    exact attention each step to report selection recall, IoU and attention mass (costs a full q.k)."""

    def __init__(
        self,
        model_or_config,
        method: str | SparseMethod,
        read: float | int = 0.125,
        *,
        tokenizer=None,
        measure: bool = False,
        **params: Any,
    ) -> None:
        m = get_sparse(method, **params)
        read = check_read(read)
        super().__init__(model_or_config)
        if model_or_config is not self.config and hasattr(model_or_config, "config"):
            m.setup(model_or_config, tokenizer)
        self.method, self.read, self.shared = m, read, {}
        layers = self.sieve_layers
        for rank, layer in enumerate(layers):
            compat.set_cache_layer(
                self, layer.layer_idx, SparseLayer(layer.layer_idx, m, read, rank, len(layers), self.shared, measure)
            )

    @property
    def sparse_layers(self) -> list[SparseLayer]:
        return [layer for layer in self.layers if isinstance(layer, SparseLayer)]

    def report(self) -> dict[str, float]:
        """Means over every layer and decode step: read fraction, attended fraction, recall, IoU, mass."""
        means = [layer.meter.mean() for layer in self.sparse_layers if layer.meter.steps]
        if not means:
            return {"steps": 0}
        out = {k: sum(m[k] for m in means) / len(means) for k in means[0] if k not in ("steps", "dense_steps")}
        out["steps"] = means[0]["steps"]
        out["dense_layer_steps"] = sum(m["dense_steps"] for m in means)
        return out

    def adopt(self, prefilled: CompressibleCache) -> SparseCache:
        """Take over the tokens of an already prefilled ``CompressibleCache`` (shared, never written): one prefill,
        then any number of methods and read budgets. Each layer's index is built at its next step."""
        if len(prefilled.layers) != len(self.layers):
            raise ValueError("the prefilled cache belongs to another model (its layer count differs)")
        for i, (mine, theirs) in enumerate(zip(self.layers, prefilled.layers, strict=True)):
            if not isinstance(mine, SparseLayer):
                compat.set_cache_layer(self, i, copy.copy(theirs))
                continue
            compat.adopt_layer(mine, theirs, ("valid", "token_index", "cumulative_length"))
            if mine.token_index is not None:
                raise ValueError("sparse decoding reads a whole cache: this one was compressed (tokens evicted)")
            mine.index, mine.meter = None, Meter()
        self.shared.clear()
        return self

    def fork(self) -> SparseCache:
        out = super().fork()
        out.shared = {}
        for layer in out.sparse_layers:
            layer.shared = out.shared
        return out


__all__ = ["SPARSE", "Meter", "SelectInputs", "Selection", "SparseCache", "SparseLayer", "SparseMethod", "get_sparse"]
