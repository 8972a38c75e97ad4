from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


@dataclass
class Streaming(Method):
    """Attention sinks plus a recent window; the score is plain recency, so the budget left after
    the ``sinks`` goes to the most recent tokens."""

    id = "streaming"
    paper = "StreamingLLM: Efficient Streaming Language Models with Attention Sinks (Xiao et al., 2023)"
    rule = "keep the first `sinks` tokens and the most recent ones"

    sinks: int = 4

    def score(self, x: ScoreInputs) -> Tensor:
        b, h, t = x.shape
        return torch.arange(t, dtype=torch.float32, device=x.keys.device).expand(b, h, t)
