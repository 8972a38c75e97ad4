from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AttnSum
from tokensieve.kv.methods.base import Method


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
