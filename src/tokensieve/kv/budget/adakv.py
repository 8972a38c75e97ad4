"""AdaKV: head-adaptive budgets inside a layer (one top-k across the layer's heads, with a per-head floor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.ops.select import protection_mask, rank
from tokensieve.kv.budget.base import EqualLayers


def head_distributions(scores: Tensor, eligible: Tensor) -> Tensor:
    """Scores ``[B, Hkv, T]`` made comparable across heads: shifted to be >= 0 and scaled to sum to 1 per head
    over the ``eligible [B, T]`` tokens (0 elsewhere). Attention scores already sum to the same total in every
    head (the softmax), up to pooling, so for them this only removes a constant."""
    s = scores.float().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    e = eligible[:, None, :].expand_as(s)
    low = s.masked_fill(~e, float("inf")).amin(-1, keepdim=True)
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
    s = (s - low).masked_fill(~e, 0.0)
    total = s.sum(-1, keepdim=True)
    uniform = e.float() / e.float().sum(-1, keepdim=True).clamp(min=1)
    return torch.where(total > 0, s / total.clamp(min=torch.finfo(s.dtype).tiny), uniform)


@dataclass
class AdaKV(EqualLayers):
    """Each layer keeps ``Hkv x budget`` tokens in all, chosen by one top-k across its KV heads: a head whose
    attention concentrates on few tokens yields slots to a head whose attention spreads. Every head first gets
    a floor of ``floor x budget`` tokens (the paper's safeguard, alpha = 0.2) and its protected tokens.

    Scores are made comparable across heads by ``head_distributions`` (each head's scores as a distribution over
    its unprotected tokens), which is AdaKV's own setting for attention scores and extends it to any score.
    Padding is never kept: a ragged layout holds only real tokens."""

    id = "adakv"
    paper = "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation (Feng et al., 2024)"
    rule = "per layer, top-(Hkv x budget) across heads of per-head normalised scores, with a per-head floor"

    floor: float = 0.2

    def head_budgets(self, scores: Tensor, budget: int, valid: Tensor | None, sinks: int, window: int) -> Tensor:
        b, h, t = scores.shape
        real = torch.ones(b, t, dtype=torch.bool, device=scores.device) if valid is None else valid
        protect = protection_mask(valid, b, t, sinks, window, scores.device)
        p = head_distributions(scores, real & ~protect)
        order = rank(scores, valid, sinks, window)  # protected first, then by score, padding last
        ranked = p.gather(-1, order)  # [B, H, T], non-increasing after the protected prefix
        n_real = real.sum(-1)  # [B]
        out = torch.empty(b, h, dtype=torch.long, device=scores.device)
        for row in range(b):
            cap = int(n_real[row])
            floor = min(cap, max(round(self.floor * budget), int(protect[row].sum())))
            total = min(h * min(budget, cap), h * cap)
            extra = total - h * floor
            counts = torch.full((h,), floor, dtype=torch.long, device=scores.device)
            if extra > 0:
                cand = ranked[row].clone()
                cand[:, :floor] = float("-inf")
                cand[:, cap:] = float("-inf")
                top = cand.reshape(-1).topk(extra).indices // t
                counts += torch.bincount(top, minlength=h)
            out[row] = counts
        return out
