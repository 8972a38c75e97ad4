from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import GumbelSum
from tokensieve.kv.methods.base import Method


@dataclass
class Keyformer(Method):
    """Key tokens by a Gumbel-softmax score: softmax((logits + g) / tau), g ~ Gumbel(0, 1), accumulated
    over the prompt queries. The noise is drawn per (row, column) in seeded blocks, shared by the heads,
    so it does not depend on chunking. At prefill tau is ``tau`` (tau_init); its rise across decode steps
    belongs to decode-time eviction. A recent window of 20% of the budget is kept (the paper's key + recent
    split). At decode time (``DecodeCache``) tau rises linearly to ``tau_end`` over ``tau_steps`` steps."""

    id = "keyformer"
    paper = "Keyformer: KV Cache Reduction through Key Tokens Selection (Adnan et al., 2024)"
    rule = "sum_i softmax((A_logits[i] + Gumbel) / tau)[j]; key tokens plus a recent window"

    window: float = 0.2
    tau: float = 1.0
    seed: int = 0
    tau_end: float = 2.0
    tau_steps: int = 512

    def needs(self) -> Needs:
        return Needs(stats=frozenset({GumbelSum(tau=self.tau, seed=self.seed)}))

    def score(self, x: ScoreInputs) -> Tensor:
        return x.stat(GumbelSum(tau=self.tau, seed=self.seed))
