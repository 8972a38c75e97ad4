"""Method registry: one small file per method, one entry here."""

from __future__ import annotations

from typing import Any

from ..registry import instantiate
from .a2sf import A2SF
from .base import Method
from .compresskv import CompressKV
from .ems import EMS
from .expected_attention import ExpectedAttention
from .h2o import H2O
from .keydiff import KeyDiff
from .keyformer import Keyformer
from .knorm import KNorm
from .kvzip import KVzip, KVzipPlus
from .lagkv import LagKV
from .mikv import MiKV, ZipCacheQuant
from .modifiers import ACT, ZeroTuning
from .random import Random
from .razor import Razor
from .scissorhands import Scissorhands
from .snapkv import SnapKV
from .span import Span
from .streaming import Streaming
from .surprise import Surprise
from .tova import TOVA
from .zipcache import ZipCache

REGISTRY: dict[str, type[Method]] = {
    cls.id: cls for cls in (Streaming, H2O, Scissorhands, A2SF, Keyformer, SnapKV, TOVA, KNorm, ZipCache, EMS, Random)
}
# keeping evicted information at low cost (the head-adaptive issue)
REGISTRY.update({cls.id: cls for cls in (MiKV, ZipCacheQuant, Razor, CompressKV, ACT, ZeroTuning)})
# question-unseen compression (issue 12)
REGISTRY.update({cls.id: cls for cls in (KVzip, KVzipPlus, ExpectedAttention, KeyDiff, LagKV, Surprise, Span)})


def method_ids() -> list[str]:
    return list(REGISTRY)


def get_method(method: str | Method, **params: Any) -> Method:
    """A method instance from its id (with optional parameter overrides), or the instance itself."""
    return instantiate(REGISTRY, Method, "method id", method, params)


__all__ = ["REGISTRY", "Method", "get_method", "method_ids"]
