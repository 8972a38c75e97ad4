"""The allocator interface: how many tokens each layer, and each KV head inside a layer, keeps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from tokensieve.registry import Registered


@dataclass
class Allocator(Registered, ABC):
    """Two decisions: ``layer_budgets`` before the prefill (per-layer mean budgets per KV head), and
    ``head_budgets`` when a layer is compressed, from its scores (None: every head keeps the layer budget).
    An allocator composes with any method's score."""

    kind: ClassVar[str] = "budget allocator"
    by_layer: ClassVar[bool] = False  # its head_budgets differ per layer: it also takes ``layer_idx=``

    @abstractmethod
    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        """Per-layer token budgets (per KV head) that average ``budget`` and never exceed ``n_tokens``."""

    def head_budgets(self, scores: Tensor, budget: int, valid: Tensor | None, sinks: int, window: int) -> Tensor | None:
        """Tokens each (row, KV head) of one layer keeps, ``[B, Hkv]`` long, or None for ``budget`` everywhere."""
        return None

    def bind(self, model: Any) -> None:
        """Load or compute what this allocator needs from the model (calibration); a no-op by default."""
        return None


class EqualLayers(Allocator):
    """Every layer gets the mean budget (capped at the context); a subclass may still split it per head."""

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        return [min(budget, n_tokens)] * n_layers


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
