"""ZipVL: the layer's keep ratio is chosen by the input (top-p over its attention mass)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.ops.select import protection_mask
from tokensieve.kv.budget.adakv import head_distributions
from tokensieve.kv.budget.base import EqualLayers


@dataclass
class ZipVL(EqualLayers):
    """Per layer, the smallest number of tokens whose score mass reaches ``tau`` of the total: each head's
    scores as a distribution (``head_distributions``), averaged over the layer's heads, sorted, and cut where
    the cumulative mass first reaches ``tau``. Every KV head of the layer keeps that many (its own top tokens),
    so the layer stays dense and layers differ. The requested ``keep``/``budget`` is an upper bound per layer:
    memory never exceeds what was asked, and a layer whose mass is concentrated keeps far less."""

    id = "zipvl"
    paper = "ZipVL: Efficient Large Vision-Language Models with Dynamic Token Sparsification (He et al., 2024)"
    rule = "per layer: smallest k whose top-k score mass >= tau (head-mean of per-head distributions), <= budget"

    tau: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            from tokensieve.errors import BudgetError

            raise BudgetError(f"zipvl's mass threshold tau={self.tau} must be in (0, 1], e.g. tau=0.95")

    def head_budgets(self, scores: Tensor, budget: int, valid: Tensor | None, sinks: int, window: int) -> Tensor:
        b, h, t = scores.shape
        real = torch.ones(b, t, dtype=torch.bool, device=scores.device) if valid is None else valid
        protect = protection_mask(valid, b, t, sinks, window, scores.device)
        mass = head_distributions(scores, real).mean(1)  # [B, T], sums to 1 per row
        cum = mass.sort(-1, descending=True).values.cumsum(-1)
        k = (cum < self.tau - 1e-6).sum(-1) + 1  # first k whose mass reaches tau
        k = torch.maximum(k, protect.sum(-1))
        k = torch.minimum(k, torch.minimum(real.sum(-1), torch.full_like(k, budget)))
        return k[:, None].expand(b, h).contiguous()
