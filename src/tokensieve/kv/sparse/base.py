"""The base of every sparse-decoding method: a dataclass that scores the held slots for one decode query.

The cache is kept whole. At each decode step a method scores the slots cheaply (page bounds, a few
channels, a reused selection...), the layer reads the top ``k`` (plus protected sinks and recent tokens)
and runs exact attention over them only. A method may keep an *index* per layer (page min/max, a label
cache), built at prefill and extended as tokens are appended; it says how much of the keys its scoring
read, so the fraction of the cache each step touches is measured, not assumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from tokensieve.registry import Registered

Index = dict[str, Tensor]


@dataclass
class SelectInputs:
    """One layer's decode step. ``q [B, Hkv, G, D]`` is the query, grouped and pre-scaled (float)."""

    q: Tensor
    keys: Tensor  # [B, Hkv, S, D]
    valid: Tensor | None  # [B, S]
    index: Index
    k: int  # how many slots this step may read per head
    layer: int  # rank of this layer among the sparse layers
    n_layers: int
    step: int  # tokens seen (identifies the decode step across layers)
    shared: dict[str, Any] = field(default_factory=dict)  # cross-layer state within a step (TidalDecode)


@dataclass
class Selection:
    """What to read. ``scores [B, Hkv or 1, S]`` rank the slots (None: run dense attention this layer);
    ``scoring_read`` is the fraction of the keys' bytes read to compute them; ``keep [B, Hkv, S]``, if given,
    drops slots from the top ``k`` (a dynamic per-head count); ``index`` replaces the layer's index."""

    scores: Tensor | None
    scoring_read: float
    keep: Tensor | None = None
    index: Index | None = None


@dataclass
class SparseMethod(Registered, ABC):
    """Every method reads the first ``sinks`` and the last ``window`` real slots, counted in ``k``; each
    takes at most a quarter of ``k``, so at least half of the reads are the method's own choice."""

    kind: ClassVar[str] = "sparse decoding"

    sinks: int = 4
    window: int = 16

    def setup(self, model, tokenizer=None) -> None:
        """Model-specific preparation (offline calibration); called once when a cache is built."""

    def protected(self, k: int) -> tuple[int, int]:
        return min(self.sinks, k // 4), min(self.window, k // 4)

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        return {}

    def extend_index(self, index: Index, keys: Tensor, valid: Tensor | None, n_new: int, layer: int) -> Index:
        """The index after ``n_new`` slots were appended (default: rebuilt; override to update in place)."""
        return self.build_index(keys, valid, layer)

    @abstractmethod
    def select(self, x: SelectInputs) -> Selection: ...
