"""The base of every prefill-pruning method: where to prune, how much to keep, what attention to read.

A pruner is a small dataclass of policy. The engine (``engine.py``) does the work: it records the
attention the pruner asks for, and before each pruning layer drops the least important prompt tokens
from the hidden states, so every later layer computes on fewer tokens (that is the time-to-first-token
saving). Importance is always ``[B, n_alive]`` over the tokens still in the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokensieve.errors import InvalidKeepError
from tokensieve.registry import Registered


@dataclass
class Pruner(Registered):
    """``layers`` are the pruning layers (fractions of the depth in (0, 1), or layer indices); ``keep`` is the
    fraction of the prompt still in the sequence after each of them (non-increasing). The first ``sinks``
    tokens and the last token (the one whose logits are the first answer token) are never pruned."""

    kind: ClassVar[str] = "prefill pruning"
    cumulative: ClassVar[bool] = False  # importance summed over every observed layer (True) or the latest
    revive: ClassVar[bool] = False  # pruned tokens can come back while generating (aux cache)

    layers: tuple[float, ...] = (0.25, 0.5, 0.75)
    keep: tuple[float, ...] = (0.7, 0.5, 0.35)
    sinks: int = 1
    rows: int = 1  # importance = attention from the last `rows` query rows

    def __post_init__(self) -> None:
        self.layers, self.keep = tuple(self.layers), tuple(float(k) for k in self.keep)
        if len(self.layers) != len(self.keep) or not self.layers:
            raise InvalidKeepError("give one keep fraction per pruning layer (layers=..., keep=... of equal length)")
        if any(not 0.0 < k <= 1.0 for k in self.keep) or list(self.keep) != sorted(self.keep, reverse=True):
            raise InvalidKeepError(
                f"keep fractions {self.keep} must lie in (0, 1] and not increase with depth (pruned tokens stay pruned)"
            )

    def stages(self, n_layers: int) -> dict[int, float]:
        """Pruning layer index -> keep fraction. Fractions of the depth map to layers 1 .. n_layers - 1."""
        out: dict[int, float] = {}
        for where, keep in zip(self.layers, self.keep, strict=True):
            i = round(where * n_layers) if isinstance(where, float) and where < 1 else int(where)
            if not 1 <= i < n_layers:
                raise InvalidKeepError(f"pruning layer {where} is outside the model's layers 1..{n_layers - 1}")
            out[i] = min(keep, out.get(i, 1.0))
        return dict(sorted(out.items()))

    def observed_layers(self, n_layers: int) -> set[int]:
        """The layers whose attention feeds importance (default: the one before each pruning layer)."""
        return {i - 1 for i in self.stages(n_layers)}
