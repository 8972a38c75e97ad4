from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokensieve.kv.methods.mikv import MiKV


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
