from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod, cls_attention
from tokensieve.vision.tokens import Tokens


@dataclass
class ClsAttention(VisionMethod):
    """Keep the patches the [CLS] query attends to most (head mean). ``layers="last"`` uses the layer just
    before the pruning point (the encoder's "last" layer in FasterVLM's VLM setting); ``"all"`` averages
    every layer before it (the ensemble)."""

    id = "cls"
    paper = "FasterVLM ([CLS] Attention is All You Need, Zhang et al., 2024) / VTC-CLS (Wang et al., 2024)"
    rule = "top-k patches by [CLS] attention of the layer before the cut (or its mean over earlier layers)"
    needs_cls = True
    observe = frozenset({"cls"})

    layers: str = "last"

    def score(self, x: Tensor, st: Tokens) -> Tensor:
        chosen = [self.at - 1] if self.layers == "last" else list(range(self.at))
        return cls_attention(st, chosen)
