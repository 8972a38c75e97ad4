"""How many tokens to keep where. An allocator turns a mean per-head budget into per-layer budgets,
and optionally into per-head budgets inside a layer (head-adaptive, mass-threshold)."""

from __future__ import annotations

from typing import Any

from tokensieve.kv.budget.adakv import AdaKV
from tokensieve.kv.budget.base import Allocator
from tokensieve.kv.budget.compresskv import ErrorProportional
from tokensieve.kv.budget.lukv import LUKV
from tokensieve.kv.budget.per_layer import PerLayer
from tokensieve.kv.budget.pyramid import Pyramid
from tokensieve.kv.budget.uniform import Uniform
from tokensieve.kv.budget.zipvl import ZipVL
from tokensieve.registry import instantiate, register_family

ALLOCATORS: dict[str, type[Allocator]] = {cls.id: cls for cls in (Uniform, Pyramid, AdaKV, ZipVL, ErrorProportional)}
register_family(
    "budget allocator",
    ALLOCATORS,
    "a budget allocator: pass allocator={id!r}",
    __name__,
)
# issue 28 (breadth)
ALLOCATORS.update({cls.id: cls for cls in (PerLayer, LUKV)})


def get_allocator(allocator: str | Allocator, **params: Any) -> Allocator:
    """An allocator instance from its id (with optional parameter overrides), or the instance itself."""
    return instantiate(ALLOCATORS, Allocator, "budget allocator", allocator, params, noun="allocator")


__all__ = [
    "ALLOCATORS",
    "LUKV",
    "AdaKV",
    "Allocator",
    "ErrorProportional",
    "PerLayer",
    "Pyramid",
    "Uniform",
    "ZipVL",
    "get_allocator",
]
