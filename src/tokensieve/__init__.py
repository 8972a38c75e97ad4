"""tokensieve: measure which tokens matter inside a transformer, and act on it."""

from __future__ import annotations

from tokensieve import explain  # a callable package: tokensieve.explain(model, tok, ...) and tokensieve.explain.*
from tokensieve.core.observe.hooks import prepare
from tokensieve.errors import (
    BatchError,
    BudgetError,
    CalibrationError,
    EmptyContextError,
    InvalidKeepError,
    ModelNotFoundError,
    NotPreparedError,
    PaddingError,
    ParameterError,
    TokenSieveError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)
from tokensieve.kv import (
    ALLOCATORS,
    REGISTRY,
    Answer,
    Compressed,
    DecodeAnswer,
    DecodeCache,
    DecodeStats,
    Method,
    Prefill,
    SieveCache,
    SieveLayer,
    SparseCache,
    Stats,
    compress,
    decode,
    generate,
    get_allocator,
    get_method,
    method_ids,
    prefill,
    prune,
)
from tokensieve.runtime.models import BUNDLED, DEFAULT_MODEL, load_model
from tokensieve.runtime.prompts import PromptFormat

__version__ = "0.1.0"

__all__ = [
    "ALLOCATORS",
    "BUNDLED",
    "DEFAULT_MODEL",
    "REGISTRY",
    "Answer",
    "BatchError",
    "BudgetError",
    "CalibrationError",
    "Compressed",
    "DecodeAnswer",
    "DecodeCache",
    "DecodeStats",
    "EmptyContextError",
    "InvalidKeepError",
    "Method",
    "ModelNotFoundError",
    "NotPreparedError",
    "PaddingError",
    "ParameterError",
    "Prefill",
    "PromptFormat",
    "SieveCache",
    "SieveLayer",
    "SparseCache",
    "Stats",
    "TokenSieveError",
    "UnknownMethodError",
    "UnsupportedArchitectureError",
    "compress",
    "decode",
    "explain",
    "generate",
    "get_allocator",
    "get_method",
    "load_model",
    "method_ids",
    "prefill",
    "prepare",
    "prune",
]
