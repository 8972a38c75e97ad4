from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.tokens import Tokens, prune


def max_min_select(feats: Tensor, k: int) -> Tensor:
    """Greedy max-min diversity on cosine distance: start from the token farthest from its nearest
    neighbour, then repeatedly add the token whose distance to the chosen set is largest. [B, N, d] -> [B, k]."""
    f = F.normalize(feats, dim=-1)
    dist = 1 - f @ f.transpose(1, 2)  # [B, N, N] token-token distances (not attention)
    b, n = dist.shape[:2]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    first = dist.masked_fill(eye, float("inf")).min(-1).values.argmax(-1)
    chosen = [first]
    rows = torch.arange(b, device=f.device)
    nearest = dist[rows, first].clone()  # distance of every token to the chosen set
    nearest[rows, first] = -float("inf")
    for _ in range(k - 1):
        nxt = nearest.argmax(-1)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, dist[rows, nxt])
        nearest[rows, nxt] = -float("inf")  # never picked twice, even among duplicates
    return torch.stack(chosen, 1)


@dataclass
class DivPrune(VisionMethod):
    """Keep a maximally diverse subset of the patch tokens (their hidden states at the cut), ignoring
    importance: the max-min diversity problem, solved greedily as the paper does."""

    id = "divprune"
    paper = "DivPrune: Diversity-based Visual Token Pruning (Alvar et al., CVPR 2025)"
    rule = "greedy max-min cosine diversity over the patch tokens"

    def reduce(self, x: Tensor, st: Tokens, n: int) -> Tensor:
        return prune(x, st, max_min_select(x[:, st.n_special :], n))
