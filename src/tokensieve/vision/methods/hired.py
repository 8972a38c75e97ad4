from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod, cls_attention
from tokensieve.vision.tokens import Tokens, prune


def split_budget(weights: Tensor, caps: Tensor, k: int) -> Tensor:
    """Integer budgets [P] proportional to ``weights`` that sum to ``k`` and respect ``caps`` (largest remainder)."""
    budget = torch.zeros_like(caps)
    left, free = k, caps > 0
    while left > 0:
        w = weights * free
        share = w / w.sum() * left
        add = torch.minimum(share.floor().long(), caps - budget)
        if add.sum() == 0:  # hand out the remainder one at a time, largest fractional share first
            order = (share - share.floor()).argsort(descending=True)
            add = torch.zeros_like(caps)
            for p in order[free[order]][:left]:
                add[p] = 1
        budget += add
        left = k - int(budget.sum())
        free = budget < caps
    return budget


@dataclass
class HiRED(VisionMethod):
    """Split the token budget across ``parts x parts`` image partitions in proportion to each partition's
    [CLS] attention at an early layer; inside a partition keep the patches with the highest [CLS]
    attention of the layer before the cut (HiRED's final-layer attention)."""

    id = "hired"
    paper = "HiRED: Attention-Guided Token Dropping for Efficient Inference of High-Resolution VLMs (Arif et al., 2024)"
    rule = "budget per partition by early-layer [CLS] attention; top [CLS] attention (layer before the cut) within"
    needs_cls = True
    observe = frozenset({"cls"})

    parts: int = 2
    early: int = 0

    def reduce(self, x: Tensor, st: Tokens, n: int) -> Tensor:
        gh, gw = st.grid
        rows = torch.arange(gh * gw, device=x.device) // gw * self.parts // gh
        cols = torch.arange(gh * gw, device=x.device) % gw * self.parts // gw
        part = rows * self.parts + cols
        early, final = cls_attention(st, [self.early]), cls_attention(st, [self.at - 1])
        caps = torch.bincount(part, minlength=self.parts**2)
        keep = []
        for b in range(x.shape[0]):
            weights = torch.zeros(self.parts**2, dtype=early.dtype).index_add_(0, part, early[b])
            budget = split_budget(weights, caps, n)
            chosen = [torch.nonzero(part == p)[:, 0][final[b, part == p].topk(int(c)).indices] for p, c in
                      enumerate(budget) if c > 0]  # fmt: skip
            keep.append(torch.cat(chosen))
        return prune(x, st, torch.stack(keep))
