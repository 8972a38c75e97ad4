"""What a compressed context holds and what it cost, measured (``Stats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokensieve import compat
from tokensieve.core.ops.memory import layers_bytes
from tokensieve.kv.cache import SieveLayer

if TYPE_CHECKING:
    from tokensieve.kv.cache import CompressibleCache


@dataclass
class Stats:
    context_tokens: int
    kv_bytes_full: int
    kv_bytes: int = 0
    tokens_held: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    compress_seconds: float = 0.0
    decode_seconds: float = 0.0
    new_tokens: int = 0
    kv_bytes_sliding: int = 0  # of kv_bytes, what the sliding-window layers hold (hybrid models)
    peak_tokens_held: int = 0  # block prefill: the most slots one layer held at once (budget + block at most)

    @classmethod
    def measure(
        cls,
        cache: CompressibleCache,
        context_tokens: int,
        kv_bytes_full: int,
        prefill_seconds: float,
        compress_seconds: float,
    ) -> Stats:
        """What ``cache`` holds, measured now (bytes from its tensors' storages, slots per head), beside the full
        cache's bytes and the seconds spent: the one way every ``Compressed`` gets its stats."""
        sliding = layers_bytes([layer for layer in cache.layers if compat.is_sliding_layer(layer)], _held_by)
        return cls(
            context_tokens, kv_bytes_full, cache.kv_bytes(), cache.tokens_held(), prefill_seconds, compress_seconds,
            kv_bytes_sliding=sliding,
        )  # fmt: skip

    @property
    def ratio(self) -> float:
        return self.kv_bytes / self.kv_bytes_full if self.kv_bytes_full else 1.0


def _held_by(layer: Any) -> list:
    return layer.held_tensors() if isinstance(layer, SieveLayer) else [layer.keys, layer.values]
