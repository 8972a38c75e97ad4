"""tokensieve: measure which tokens matter inside a transformer, and act on it."""

from __future__ import annotations

from . import explain  # a callable package: tokensieve.explain(model, tok, ...) and tokensieve.explain.*
from .budget import ALLOCATORS, get_allocator
from .cache import SieveCache, SieveLayer
from .decoding import DecodeAnswer, DecodeStats, decode
from .errors import (
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
from .evicting import DecodeCache
from .methods import REGISTRY, Method, get_method, method_ids
from .models import BUNDLED, DEFAULT_MODEL, load_model
from .observe.hooks import prepare
from .pipeline import Answer, Compressed, Prefill, Stats, compress, generate, prefill
from .prompts import PromptFormat
from .prune import prune
from .sparse import SparseCache

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
