"""The KV-cache consumer. Public names used by packages above it (the llama.cpp engine reuses the methods' score
functions through ``get_method``)."""

from tokensieve.kv.methods import get_method

__all__ = ["get_method"]
