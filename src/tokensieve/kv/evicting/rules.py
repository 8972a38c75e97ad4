"""Decode-time rules live with their methods: each in its method's file (``kv/methods/<id>.py``), declared by
``Method.decode_rule``, on the base in ``kv/methods/decode_rule.py``. This module names them where they were
imported from before."""

from __future__ import annotations

from tokensieve.core.scores.attention import gumbel_rows
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step
from tokensieve.kv.methods.h2o import AccumulatedAttention
from tokensieve.kv.methods.keyformer import GumbelAccumulated
from tokensieve.kv.methods.scissorhands import AboveUniformHistory
from tokensieve.kv.methods.tova import LastQuery

__all__ = [
    "AboveUniformHistory",
    "AccumulatedAttention",
    "DecodeRule",
    "GumbelAccumulated",
    "LastQuery",
    "State",
    "Step",
    "gumbel_rows",
]
