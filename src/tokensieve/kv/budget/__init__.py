"""How many tokens to keep where. An allocator turns a mean per-head budget into per-layer budgets,
and optionally into per-head budgets inside a layer (head-adaptive, mass-threshold)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokensieve.kv.budget.adakv import AdaKV
from tokensieve.kv.budget.base import Allocator, EqualLayers, _round_capped
from tokensieve.kv.budget.compresskv import ErrorProportional
from tokensieve.kv.budget.zipvl import ZipVL
from tokensieve.registry import instantiate, register_family


@dataclass
class Uniform(EqualLayers):
    """The same budget in every layer and head."""

    id = "uniform"
    paper = "baseline"
    rule = "the same keep count in every layer and head"


@dataclass
class Pyramid(Allocator):
    """PyramidKV: budgets fall linearly from the lowest layer to the highest, averaging ``budget``.
    The top layer gets ``budget / beta`` and the bottom ``2 * budget - budget / beta`` (the paper's beta=20);
    a layer cannot hold more than the context, and what a capped layer cannot use goes to the others."""

    id = "pyramid"
    paper = "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling (Cai et al., 2024)"
    rule = "layer budgets fall linearly from the lowest layer to the highest"
    beta: float = 20.0

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        if n_layers == 1:
            return [min(budget, n_tokens)]
        top = budget / self.beta
        bottom = 2 * budget - top
        raw = [bottom + (top - bottom) * i / (n_layers - 1) for i in range(n_layers)]
        return _round_capped(raw, budget * n_layers, n_tokens)


ALLOCATORS: dict[str, type[Allocator]] = {cls.id: cls for cls in (Uniform, Pyramid, AdaKV, ZipVL, ErrorProportional)}
register_family(
    "budget allocator",
    ALLOCATORS,
    "a budget allocator: pass allocator={id!r}",
    __name__,
)


def get_allocator(allocator: str | Allocator, **params: Any) -> Allocator:
    """An allocator instance from its id (with optional parameter overrides), or the instance itself."""
    return instantiate(ALLOCATORS, Allocator, "budget allocator", allocator, params, noun="allocator")


__all__ = ["ALLOCATORS", "AdaKV", "Allocator", "ErrorProportional", "Pyramid", "Uniform", "ZipVL", "get_allocator"]
