from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod, cls_attention
from tokensieve.vision.tokens import Tokens


def transition_variation(prev: Tensor, now: Tensor) -> Tensor:
    """Token transition variation between two layers' hidden states [B, T, D] -> [B, T]:
    relative change of the norm plus change of direction (1 - cosine)."""
    n0, n1 = prev.norm(dim=-1), now.norm(dim=-1)
    return (n1 - n0).abs() / n0.clamp_min(1e-6) + (1 - F.cosine_similarity(prev, now, dim=-1))


@dataclass
class TransPrune(VisionMethod):
    """Tokens whose representation keeps changing across layers are doing work: keep the largest
    accumulated transition variation (layer inputs 0..at), mixed with [CLS] attention (the ViT analogue
    of the instruction attention the paper adds) by ``alpha``; both are scaled to mean 1 first."""

    id = "transprune"
    paper = "TransPrune: Token Transition Pruning for Efficient Large Vision-Language Model (Li et al., 2025)"
    rule = "sum over layers of |d norm|/norm + (1 - cos) per token, + alpha * [CLS] attention"
    observe = frozenset({"ttv", "cls"})

    alpha: float = 0.5

    def track(self, x: Tensor, st: Tokens) -> None:
        if st.layer > self.at:  # the evidence is gathered up to the cut only
            return
        if st.prev is not None and st.prev.shape == x.shape:
            step = transition_variation(st.prev, x)
            st.ttv = step if st.ttv is None else st.ttv + step
        st.prev = x

    def score(self, x: Tensor, st: Tokens) -> Tensor:
        ttv = st.ttv[:, st.n_special :]
        s = ttv / ttv.mean(-1, keepdim=True)
        if self.alpha and st.n_special:
            cls = cls_attention(st, [self.at - 1])
            s = s + self.alpha * cls / cls.mean(-1, keepdim=True)
        return s
