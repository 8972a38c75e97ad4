from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.heads import evict_layer
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.leverage import Leverage
from tokensieve.kv.methods.non_causal_attn import NonCausalAttn

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def zscore(s: Tensor, valid: Tensor | None) -> Tensor:
    """Each head's scores centred and scaled over the row's real tokens (padding left at 0)."""
    w = s.new_ones(s.shape[0], s.shape[-1]) if valid is None else valid.float()
    w = w[:, None, :]
    n = w.sum(-1, keepdim=True).clamp(min=1)
    mean = (s * w).sum(-1, keepdim=True) / n
    std = (((s - mean) * w) ** 2).sum(-1, keepdim=True).div(n).sqrt().clamp(min=1e-6)
    return (s - mean) / std * w


@dataclass
class Compactor(Method):
    """Compactor's blend: ``beta * z(leverage) + z(non_causal_attn)``, each z-scored per head over the context.
    The paper weighs leverage by the share removed, r: with ``beta < 0`` (default) beta = r = 1 - budget / T at
    compression (``score`` alone, which sees no budget, uses r = 0.5). The first 8 and last 4 tokens are protected.
    The paper pairs it with the head-adaptive allocator (``allocator="adakv"``). kvpress's ``CompactorPress``
    differs by its non-causal attention (unscaled logits: ``non_causal_attn``'s docstring) and its leverage sketch.
    """

    id = "compactor"
    paper = "Compactor: Calibrated Query-Agnostic KV Cache Compression with Approximate Leverage Scores (2025)"
    rule = "r * z(leverage) + z(non-causal chunked attention x ||v||); first 8 / last 4 protected"

    sinks: int = 8
    window: float = 4
    beta: float = -1.0
    width: int = 48
    chunk: int = 256

    def __post_init__(self) -> None:
        self._leverage = Leverage(width=self.width)
        self._attention = NonCausalAttn(chunk=self.chunk)

    def needs(self) -> Needs:
        return self._attention.needs()

    def bind(self, model: Any) -> None:
        self._leverage.bind(model)

    def blend(self, x: ScoreInputs, removed: float) -> Tensor:
        beta = removed if self.beta < 0 else self.beta
        return beta * zscore(self._leverage.score(x), x.valid) + zscore(self._attention.score(x), x.valid)

    def score(self, x: ScoreInputs) -> Tensor:
        return self.blend(x, 0.5)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        removed = max(0.0, 1.0 - budget / max(1, x.keys.shape[2]))
        return evict_layer(layer, self.blend(x, removed), budget, *self.protected(budget), allocator, inplace)
