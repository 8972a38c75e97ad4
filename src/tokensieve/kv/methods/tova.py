from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


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
