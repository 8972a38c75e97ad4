from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.quant import bytes_per_token, check_bits, group_size
from tokensieve.core.ops.select import rank
from tokensieve.errors import BudgetError, ParameterError
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class MiKV(Method):
    """Mixed precision instead of eviction: the ``keep`` fraction of tokens that ``importance`` (any eviction
    method's score, H2O's by default as in the paper) ranks highest stays in full precision (or ``hi_bits``), and
    every other token stays too, quantized to ``lo_bits`` per token in groups of ``group`` channels with fp16
    scales and zero points. Keys are channel-balanced before quantizing (outlier-aware: each channel divided by
    the square root of its peak magnitude, multiplied back after). Protected tokens (sinks, recent window) are
    the importance method's. ``lo_bits=0`` evicts the rest instead (plain eviction, for comparisons).

    Bytes held per head and token, for head dim D: full precision 4D; INT-b codes D*b/8 plus 4 bytes per group
    (fp16 scale + zero). For SmolLM2 (D=64, group 32): INT8 72, INT4 40, INT2 24 bytes against 256 in fp32, so
    keep=f holds f + (1-f) x 24/256 of the full cache (0.32 at f=0.25). ``byte_fraction`` computes it."""

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
        from tokensieve.kv.methods import get_method

        if self.budget_of not in ("tokens", "bytes"):
            raise ParameterError(f"budget_of={self.budget_of!r}: use 'tokens' or 'bytes'")
        if self.hi_bits:
            check_bits(self.hi_bits, "hi_bits")
        if self.lo_bits:
            check_bits(self.lo_bits, "lo_bits")
        if self.importance in (self.id, "mikv", "zipcache_quant"):
            raise ParameterError(f"importance={self.importance!r} must be an eviction method's id, e.g. h2o or snapkv")
        self._inner = get_method(self.importance)

    def needs(self) -> Needs:
        return self._inner.needs()

    def bind(self, model: Any) -> None:
        self._inner.bind(model)

    def full_pass(self, pre: Any) -> dict[int, Tensor] | None:
        return self._inner.full_pass(pre)

    def score(self, x: ScoreInputs) -> Tensor:
        return self._inner.score(x)

    def protected(self, budget: int) -> tuple[int, int]:
        return self._inner.protected(budget)

    def splits(self, budget: int, n_tokens: int) -> list[tuple[int, int | None]]:
        return [(budget, self.hi_bits or None), (n_tokens - budget, self.lo_bits)]

    def byte_fraction(self, keep: float, head_dim: int, full_bytes: int = 4) -> float:
        """The fraction of the full cache's bytes held at ``keep`` (before anything is appended)."""
        full = bytes_per_token(head_dim, None, full_bytes=full_bytes)
        hi = bytes_per_token(head_dim, self.hi_bits or None, self.group, full_bytes)
        lo = 0.0 if not self.lo_bits else bytes_per_token(head_dim, self.lo_bits, self.group, full_bytes)
        return (keep * hi + (1 - keep) * lo) / full

    def keep_for_bytes(self, fraction: float, head_dim: int, full_bytes: int = 4) -> float:
        """The ``keep`` whose held bytes are ``fraction`` of the full cache's (the inverse of byte_fraction)."""
        lo, one = self.byte_fraction(0.0, head_dim, full_bytes), self.byte_fraction(1.0, head_dim, full_bytes)
        if not lo < fraction <= one:
            raise BudgetError(f"{fraction:.3f} of the bytes is outside what {self.id} can hold ({lo:.3f}, {one:.3f}]")
        return (fraction - lo) / (one - lo)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        from tokensieve.kv.cache.quantized import MixedLayer

        group_size(self.group, layer.keys.shape[-1])  # a clear error before any work
        scores = self.score(x)
        if self.budget_of == "bytes":  # the budget's share of the tokens, read as a share of the bytes
            t = layer.keys.shape[-2]
            budget = round(self.keep_for_bytes(budget / t, layer.keys.shape[-1], layer.keys.element_size()) * t)
        sinks, window = self.protected(budget)
        counts = None if allocator is None else allocator.head_budgets(scores, budget, layer.valid, sinks, window)
        if counts is not None:
            if not bool((counts == counts.flatten()[0]).all()):
                raise BudgetError(
                    f"{self.id} keeps the same number of high-precision tokens in every head: use the uniform, "
                    "pyramid or compresskv allocator (head-adaptive budgets apply to eviction methods)"
                )
            budget = int(counts.flatten()[0])
        order = rank(scores, layer.valid, sinks, window)
        return MixedLayer.from_ranking(layer, order, self.splits(budget, order.shape[-1]), self.group, self.balance)


@dataclass
class ZipCacheQuant(MiKV):
    """ZipCache's mixed precision: the ``keep`` fraction of salient tokens by ZipCache's normalized attention
    score (probe queries, never the full matrix) at 4 bits, the rest at 2 bits; channel-separable token-wise
    quantization (keys divided per channel by the square root of the channel's peak, then quantized per
    token as one group; values per token). Nothing stays in full precision except tokens appended later.
    For SmolLM2 (D=64): 36 and 20 bytes per head and token against 256, 0.094 of the cache at keep=0.25."""

    id = "zipcache_quant"
    paper = "ZipCache: Accurate and Efficient KV Cache Quantization with Salient Token Identification (He et al., 2024)"
    rule = "salient tokens (normalized attention score) 4-bit, others 2-bit; channel-separable token-wise"
    kind: ClassVar[str] = "mixed precision"

    importance: str = "zipcache"
    hi_bits: int = 4
    lo_bits: int = 2
    group: int = 0  # the whole token
    balance: bool = True
