from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.quant import check_bits, group_size, keep_for_byte_fraction, mixed_byte_fraction
from tokensieve.core.ops.select import rank
from tokensieve.errors import ParameterError, check_choice
from tokensieve.kv.heads import equal_head_budget
from tokensieve.kv.methods.base import ScoredBy, get_method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class MiKV(ScoredBy):
    """Mixed precision instead of eviction: the ``keep`` fraction of tokens that ``importance`` (any eviction
    method's score, H2O's by default as in the paper) ranks highest stays in full precision (or ``hi_bits``), and
    every other token stays too, quantized to ``lo_bits`` per token in groups of ``group`` channels with fp16
    scales and zero points. Keys are channel-balanced before quantizing (outlier-aware: each channel divided by
    the square root of its peak magnitude, multiplied back after). Protected tokens (sinks, recent window) are
    the importance method's. ``lo_bits=0`` evicts the rest instead (plain eviction, for comparisons). What a
    keep holds in bytes: ``byte_fraction`` (``core.ops.quant.mixed_byte_fraction``: 0.32 of an fp32 SmolLM2
    cache at keep=0.25 with INT2)."""

    id = "mikv"
    paper = "No Token Left Behind: Reliable KV Cache Compression via Importance-Aware Mixed Precision Quantization (Yang et al., 2024)"  # noqa: E501
    rule = "top-keep tokens by an importance score in full precision, all others INT2 (per-token groups, balanced)"
    kind: ClassVar[str] = "mixed precision"

    importance: str = "h2o"
    hi_bits: int = 0  # 0: full precision
    lo_bits: int = 2
    group: int = 32
    balance: bool = True
    budget_of: str = "tokens"  # "bytes": keep is the fraction of the full cache's bytes held (equal-bytes cells)

    def __post_init__(self) -> None:
        check_choice("budget_of", self.budget_of, ("tokens", "bytes"))
        if self.hi_bits:
            check_bits(self.hi_bits, "hi_bits")
        if self.lo_bits:
            check_bits(self.lo_bits, "lo_bits")
        if self.importance in (self.id, "mikv", "zipcache_quant"):
            raise ParameterError(f"importance={self.importance!r} must be an eviction method's id, e.g. h2o or snapkv")
        self._inner = get_method(self.importance)

    def splits(self, budget: int, n_tokens: int) -> list[tuple[int, int | None]]:
        return [(budget, self.hi_bits or None), (n_tokens - budget, self.lo_bits)]

    def byte_fraction(self, keep: float, head_dim: int, full_bytes: int = 4) -> float:
        """The fraction of the full cache's bytes held at ``keep`` (before anything is appended)."""
        return mixed_byte_fraction(keep, head_dim, self.hi_bits or None, self.lo_bits or None, self.group, full_bytes)

    def keep_for_bytes(self, fraction: float, head_dim: int, full_bytes: int = 4) -> float:
        """The ``keep`` whose held bytes are ``fraction`` of the full cache's (the inverse of byte_fraction)."""
        bits = (self.hi_bits or None, self.lo_bits or None)
        return keep_for_byte_fraction(fraction, head_dim, *bits, self.group, full_bytes, self.id)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        from tokensieve.kv.cache.quantized import MixedLayer

        group_size(self.group, layer.keys.shape[-1])  # a clear error before any work
        scores = self.score(x)
        if self.budget_of == "bytes":  # the budget's share of the tokens, read as a share of the bytes
            t = layer.keys.shape[-2]
            budget = round(self.keep_for_bytes(budget / t, layer.keys.shape[-1], layer.keys.element_size()) * t)
        sinks, window = self.protected(budget)
        budget = equal_head_budget(scores, budget, layer.valid, sinks, window, allocator, self.id)
        order = rank(scores, layer.valid, sinks, window)
        return MixedLayer.from_ranking(layer, order, self.splits(budget, order.shape[-1]), self.group, self.balance)
