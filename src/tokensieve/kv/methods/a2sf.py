from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AttnSum
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.decode_rule import DecodeRule
from tokensieve.kv.methods.h2o import AccumulatedAttention


@dataclass
class A2SF(Method):
    """Accumulated attention with a forgetting factor: s_t = decay * s_{t-1} + A[t], scanned over the
    prompt queries in order, i.e. sum_i decay^(T-1-i) A[i, j]. With decay=1 it is exactly H2O's score.
    The forgetting already favours recent tokens, so no window is protected by default."""

    id = "a2sf"
    paper = "A2SF: Accumulative Attention Scoring with Forgetting Factor (Jo & Shin, 2024)"
    rule = "s_t(j) = decay * s_{t-1}(j) + A[t, j] over the prompt queries"

    decay: float = 0.3

    def needs(self) -> Needs:
        return Needs(stats=frozenset({AttnSum(decay=self.decay)}))

    def score(self, x: ScoreInputs) -> Tensor:
        return x.stat(AttnSum(decay=self.decay))

    def decode_rule(self) -> DecodeRule:
        return AccumulatedAttention(self.decay)
