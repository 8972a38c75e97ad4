"""What a decode-time rule is: a method's prefill score, carried forward one query at a time.
Each rule lives in its method's file and the method declares it (``Method.decode_rule``).

A rule keeps a small *state* per layer: tensors whose last axis is the cache slot. ``init`` builds it from
the prefill observation (it equals the method's prefill score); ``update`` folds in the attention of the
new queries of one forward (never recomputing anything over past queries); ``score`` ranks the held
slots. The layer pads the state with zeros when slots are appended and gathers it when slots are evicted,
so a rule never sees slot bookkeeping.

Shapes: ``probs`` / ``logits`` ``[B, Hkv, G, q, S]`` are the new queries' attention over the held slots
(``logits`` are scaled and masked, -inf where a query cannot see a slot), ``real [B, q]`` marks real
(non-padding) query rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs

State = dict[str, Tensor]


@dataclass
class Step:
    """One forward's new queries, as the layer hands them to a rule."""

    probs: Tensor  # [B, Hkv, G, q, S]
    logits: Tensor  # [B, Hkv, G, q, S], scaled, -inf where masked
    real: Tensor  # [B, q] float: 1 for real query rows
    rows: Tensor  # [q] token index of each new query
    positions: Tensor  # [B, Hkv, S] token index held by each slot
    n_visible: Tensor  # [B, 1, 1, q, 1] how many real slots each query sees
    prompt_len: int  # tokens seen when decoding started (the prefill)


class DecodeRule(ABC):
    """How one method's score evolves while generating. A rule that ``decides`` how many slots stay (ratio_decoding,
    dms: the share kept is an output) implements ``keep``; the others are cut to the cache's fixed budget."""

    decides: ClassVar[bool] = False

    def keep(self, layer: Any, state: State, new: int) -> tuple[State, Tensor | None]:
        """After a forward of ``new`` tokens (0: the prompt's) in ``layer`` (an ``EvictingLayer``): the state and the
        slots to keep ``[B, Hkv, k]`` (ascending; None keeps every slot)."""
        raise NotImplementedError

    @abstractmethod
    def needs(self) -> Needs: ...

    @abstractmethod
    def init(self, x: ScoreInputs) -> State: ...

    @abstractmethod
    def update(self, state: State, step: Step) -> State: ...

    @abstractmethod
    def score(self, state: State) -> Tensor:
        """[B, Hkv or 1, S]: larger = keep."""
