from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


@dataclass
class KeyDiff(Method):
    """Distinctive keys: a key that points away from the head's mean key carries what the others do not, so
    the score is ``-cos(k_j, mean key)`` (the mean over the row's real keys). Query-agnostic and needs no
    attention at all."""

    id = "keydiff"
    paper = "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference (Park et al., 2025)"
    rule = "-cos(k_j, mean_j k) per head"

    def score(self, x: ScoreInputs) -> Tensor:
        k = x.keys.float()
        if x.valid is None:
            mean = k.mean(2, keepdim=True)
        else:
            w = x.valid[:, None, :, None].float()
            mean = (k * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp(min=1)
        return -F.cosine_similarity(k, mean, dim=-1)
