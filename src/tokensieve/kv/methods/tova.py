from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step


@dataclass
class TOVA(Method):
    """Token Omission Via Attention: the last query's attention, averaged over all heads of the layer,
    so every KV head keeps the same tokens."""

    id = "tova"
    paper = "Transformers are Multi-State RNNs (TOVA; Oren et al., 2024)"
    rule = "A[last, j] averaged over all heads of the layer"

    def needs(self) -> Needs:
        return Needs(window=1)

    def score(self, x: ScoreInputs) -> Tensor:
        probs = x.window_probs(1)  # [B, Hkv, G, 1, T]
        return probs.mean(dim=(1, 2, 3)).unsqueeze(1).expand(-1, x.shape[1], -1)

    def decode_rule(self) -> DecodeRule:
        return LastQuery()


@dataclass
class LastQuery(DecodeRule):
    """TOVA: the last query's attention averaged over every head of the layer (one ranking for all heads)."""

    def needs(self) -> Needs:
        return Needs(window=1)

    def init(self, x: ScoreInputs) -> State:
        return {"last": x.window_probs(1).mean(dim=(1, 2, 3)).unsqueeze(1)}  # [B, 1, T]

    def update(self, state: State, step: Step) -> State:
        return {"last": step.probs[:, :, :, -1].mean(dim=(1, 2)).unsqueeze(1)}

    def score(self, state: State) -> Tensor:
        return state["last"]
