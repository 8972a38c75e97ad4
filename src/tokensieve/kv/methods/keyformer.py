from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import GumbelSum
from tokensieve.core.scores.attention import gumbel_rows
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step


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

    def decode_rule(self) -> DecodeRule:
        return GumbelAccumulated(self.tau, self.tau_end, self.tau_steps, self.seed)


@dataclass
class GumbelAccumulated(DecodeRule):
    """Keyformer: accumulate softmax((logits + Gumbel) / tau) with tau rising linearly from ``tau`` to
    ``tau_end`` over the first ``tau_steps`` decode steps (the paper raises it across generation; the
    cache cannot know the generation length, so the ramp length is a parameter)."""

    tau: float = 1.0
    tau_end: float = 2.0
    tau_steps: int = 512
    seed: int = 0

    def needs(self) -> Needs:
        return Needs(stats=frozenset({GumbelSum(tau=self.tau, seed=self.seed)}))

    def init(self, x: ScoreInputs) -> State:
        return {"acc": x.stat(GumbelSum(tau=self.tau, seed=self.seed)).clone()}

    def tau_at(self, rows: Tensor, prompt_len: int) -> Tensor:
        ramp = ((rows - prompt_len + 1).float() / max(1, self.tau_steps)).clamp(0.0, 1.0)
        return self.tau + (self.tau_end - self.tau) * ramp

    def update(self, state: State, step: Step) -> State:
        noise = gumbel_rows(self.seed, step.rows, step.positions)  # [B, Hkv, q, S]
        tau = self.tau_at(step.rows, step.prompt_len).to(step.logits.device).view(1, 1, 1, -1, 1)
        probs = torch.softmax((step.logits + noise.unsqueeze(2)) / tau, dim=-1).nan_to_num_(0.0)
        new = torch.einsum("bhgqs,bq->bhs", probs, step.real) / probs.shape[2]
        return {"acc": state["acc"] + new}

    def score(self, state: State) -> Tensor:
        return state["acc"]
