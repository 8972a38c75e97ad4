from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AttnSum
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step


@dataclass
class H2O(Method):
    """Heavy hitters: attention accumulated over every prompt query. As in the paper, half of the
    budget goes to the recent window (``window=0.5``) and half to the heaviest hitters."""

    id = "h2o"
    paper = "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs (Zhang et al., 2023)"
    rule = "sum_i A[i, j] over all prompt queries; top tokens plus a recent window"

    window: float = 0.5

    def needs(self) -> Needs:
        return Needs(stats=frozenset({AttnSum()}))

    def score(self, x: ScoreInputs) -> Tensor:
        return x.stat(AttnSum())

    def decode_rule(self) -> DecodeRule:
        return AccumulatedAttention(1.0)


def _row_weights(step: Step, decay: float) -> Tensor:
    """[B, q]: decay^(q-1-i) for the i-th new row (A2SF's scan unrolled over one forward), 0 for padding."""
    q = step.rows.numel()
    w = torch.full((q,), float(decay), device=step.real.device).pow(
        torch.arange(q - 1, -1, -1, device=step.real.device)
    )
    return step.real * w


@dataclass
class AccumulatedAttention(DecodeRule):
    """H2O (decay 1) and A2SF (decay < 1): s <- decay^q * s + sum_i decay^(q-1-i) A[i], GQA-mean."""

    decay: float = 1.0

    def needs(self) -> Needs:
        return Needs(stats=frozenset({AttnSum(decay=self.decay)}))

    def init(self, x: ScoreInputs) -> State:
        return {"acc": x.stat(AttnSum(decay=self.decay)).clone()}

    def update(self, state: State, step: Step) -> State:
        w = _row_weights(step, self.decay)
        new = torch.einsum("bhgqs,bq->bhs", step.probs, w) / step.probs.shape[2]
        carried = state["acc"] * self.decay ** step.rows.numel() if self.decay != 1.0 else state["acc"]
        return {"acc": carried + new}

    def score(self, state: State) -> Tensor:
        return state["acc"]
