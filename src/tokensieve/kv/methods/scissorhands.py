from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AboveUniform
from tokensieve.kv.methods.base import Method


@dataclass
class Scissorhands(Method):
    """Persistence of importance: over the last ``history`` queries, count how often each token's
    attention beat the uniform level 1/#keys. Ties (equal counts) go to the more recent token (the
    shared tie-break of ``select``); a recent window of 32 is protected as in the paper's buffer."""

    id = "scissorhands"
    paper = "Scissorhands: Exploiting the Persistence of Importance Hypothesis (Liu et al., 2023)"
    rule = "count of queries in a history window where A[i, j] > 1/#keys"

    window: float = 32
    history: int | None = 256

    def needs(self) -> Needs:
        return Needs(stats=frozenset({AboveUniform(history=self.history)}))

    def score(self, x: ScoreInputs) -> Tensor:
        return x.stat(AboveUniform(history=self.history))
