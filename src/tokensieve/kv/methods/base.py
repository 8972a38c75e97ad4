"""The base of every prefill-eviction method: a dataclass with a score and its protected tokens.

A method says what it needs the prefill to observe (``needs``) and turns one layer's observation into
a score ``[B, Hkv, T]`` (larger = keep). Which tokens survive is decided elsewhere, uniformly: the
budget says how many, ``core.ops.select`` applies the protected sinks and recent window and takes the top.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.registry import Registered

if TYPE_CHECKING:
    from tokensieve.kv.methods.decode_rule import DecodeRule


@dataclass
class Method(Registered, ABC):
    """Protection is shared by all methods: ``sinks`` first tokens and a ``window`` of recent ones are
    always kept. ``window`` < 1 is a fraction of the budget (H2O's half-recent split), else a count."""

    kind: ClassVar[str] = "prefill eviction"  # the family `tokensieve methods` groups it under

    sinks: int = 0
    window: float = 0

    changes_prefill: ClassVar[bool] = False  # installs its own layers on the cache before the prefill runs

    @property
    def evicts_only(self) -> bool:
        """Its result is plain eviction by score (what decode-time eviction can carry on)."""
        return type(self).act is Method.act

    def act(self, layer: Any, x: ScoreInputs, budget: int, allocator: Any, inplace: bool) -> Any:
        """A layout of its own (merge, quantize, whole heads) for one layer; None: plain eviction by ``score``."""
        return None

    def decode_rule(self) -> DecodeRule | None:
        """Its score carried forward one query at a time while generating (``DecodeCache``), built from its own
        parameters; None: it does not evict at decode time. The rule lives in the method's file."""
        return None

    def prepare_cache(self, cache: Any) -> None:
        """For ``changes_prefill`` methods: install their layers on the cache before the prefill."""

    def needs(self) -> Needs:
        return Needs()

    def bind(self, model: Any) -> None:
        """Load or compute what the method needs from the model (a calibration); a no-op by default."""
        return None

    def full_pass(self, pre: Any) -> dict[int, Tensor] | None:
        """Scores ``{layer_idx: [B, Hkv, T]}`` that need the whole prefill (a ``Prefill``: model, full cache,
        ids, final hidden states), computed after it and handed to ``score`` as ``x.full``. Methods that ask for
        it set ``Needs(full=True)``; the default (None) is a method scored during the prefill."""
        return None

    @abstractmethod
    def score(self, x: ScoreInputs) -> Tensor: ...

    def protected(self, budget: int) -> tuple[int, int]:
        """(sinks, window) in tokens for a per-head budget; the window shrinks first when the budget is small."""
        window = round(self.window * budget) if 0 < self.window < 1 else int(self.window)
        sinks = min(self.sinks, budget)
        return sinks, max(0, min(window, budget - sinks))
