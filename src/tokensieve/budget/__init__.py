"""How many tokens to keep where. An allocator turns a mean per-head budget into per-layer budgets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..errors import UnknownMethodError


@dataclass
class Allocator(ABC):
    id = "base"

    @abstractmethod
    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        """Per-layer token budgets (per KV head) that average ``budget`` and never exceed ``n_tokens``."""


@dataclass
class Uniform(Allocator):
    """The same budget in every layer and head."""

    id = "uniform"

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        return [min(budget, n_tokens)] * n_layers


@dataclass
class Pyramid(Allocator):
    """PyramidKV: budgets fall linearly from the lowest layer to the highest, averaging ``budget``.
    The top layer gets ``budget / beta`` and the bottom ``2 * budget - budget / beta`` (the paper's beta=20);
    a layer cannot hold more than the context, and what a capped layer cannot use goes to the others."""

    id = "pyramid"
    beta: float = 20.0

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        if n_layers == 1:
            return [min(budget, n_tokens)]
        top = budget / self.beta
        bottom = 2 * budget - top
        raw = [bottom + (top - bottom) * i / (n_layers - 1) for i in range(n_layers)]
        return _round_capped(raw, budget * n_layers, n_tokens)


def _round_capped(raw: list[float], total: int, cap: int) -> list[int]:
    """Integers close to ``raw`` that sum to ``total`` (when the cap allows) with each in [1, cap]."""
    out = [min(cap, max(1, int(r))) for r in raw]
    remainder = [r - int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: -remainder[i])
    short = min(total, cap * len(raw)) - sum(out)
    while short > 0:
        progressed = False
        for i in order:
            if short == 0:
                break
            if out[i] < cap:
                out[i] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    return out


ALLOCATORS: dict[str, type[Allocator]] = {"uniform": Uniform, "pyramid": Pyramid}


def get_allocator(allocator: str | Allocator) -> Allocator:
    if isinstance(allocator, Allocator):
        return allocator
    if allocator not in ALLOCATORS:
        raise UnknownMethodError(f"unknown budget allocator {allocator!r}; choose one of: {', '.join(ALLOCATORS)}")
    return ALLOCATORS[allocator]()
