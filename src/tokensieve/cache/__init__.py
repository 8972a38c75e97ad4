"""Cache layouts: a transformers ``Cache`` whose layers shrink, and the layers themselves."""

from .layers import CompactSlidingLayer, SieveLayer
from .sieve import SieveCache

__all__ = ["CompactSlidingLayer", "SieveCache", "SieveLayer"]
