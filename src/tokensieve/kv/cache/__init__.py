"""Cache layouts: a transformers ``Cache`` whose layers shrink, and the layers themselves."""

from tokensieve.kv.cache.layers import CompactSlidingLayer, SieveLayer
from tokensieve.kv.cache.sieve import CompressibleCache

__all__ = ["CompactSlidingLayer", "CompressibleCache", "SieveLayer"]
