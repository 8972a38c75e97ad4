from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import rank
from tokensieve.errors import CalibrationError
from tokensieve.kv.cache.ragged import RaggedLayer
from tokensieve.kv.heads import head_counts
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def output_l1(values: Tensor, w_o: Tensor) -> Tensor:
    """``[B, Hkv, T]``: ``mean_g ||v_j W_O^(h)||_1`` over the query heads h of each GQA group."""
    hkv, d = values.shape[1], values.shape[3]
    heads = w_o.float().reshape(w_o.shape[0], hkv, -1, d)  # [hidden, Hkv, G, D]
    return torch.einsum("bktd,okgd->bkgto", values.float(), heads.to(values.device)).abs().sum(-1).mean(2)


@dataclass
class CriticalKV(Wrapper):
    """CriticalKV's two-stage selection over any score (``base``): half of each head's budget goes to the base
    score's best tokens; the other half to the best of the rest by ``(s + eps) x mean_g ||v W_O^(h)||_1``, what
    the token can change in the layer's output. Per-head budgets from the plan's allocator (uniform: the same).
    Against kvpress's ``CriticalKVPress`` over SnapKV the kept sets overlap 0.79 on a tiny model at 200 tokens
    (benchmarks/unseen_kvpress/agreement.py): its SnapKV marks the 64-token window with its maximum score, so window
    tokens left out of the first stage still rank first in the second (``(max + eps) x ||v W_O||``); here the
    second stage ranks them by their own base score. The difference shrinks as the window's share of T does."""

    id = "critical_kv"
    paper = "Identify Critical KV Cache in LLM Inference from an Output Perturbation Perspective (CriticalKV, 2025)"
    rule = "top half of the budget by the base score; the rest by (s + eps) x mean_g ||v W_O^h||_1"

    eps: float = 1e-6
    first: float = 0.5  # the share of the budget the base score alone fills

    def bind(self, model: Any) -> None:
        super().bind(model)
        self._w_o = compat.output_projections(model)

    def counts(self, s: Tensor, budget: int, x: ScoreInputs, allocator: Allocator | None) -> Tensor:
        return head_counts(s, budget, x.valid, *self._inner.protected(budget), allocator)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        w_o = getattr(self, "_w_o", None)
        if w_o is None:
            raise CalibrationError(f"{self.id} reads the model's output projection: compress through tokensieve")
        s = self._inner.score(x).float()
        sinks, window = self._inner.protected(budget)
        counts = self.counts(s, budget, x, allocator).to(s.device)
        first = rank(s, x.valid, sinks, window).argsort(-1) < (counts * self.first).long()[..., None]
        second = (s + self.eps) * output_l1(x.values, w_o[x.layer_idx])
        order = rank(second.masked_fill(first, float("inf")), x.valid)
        if bool((counts == counts.flatten()[0]).all()):
            return layer.evict(order[..., : int(counts.flatten()[0])].sort(-1).values, inplace=inplace)
        return RaggedLayer.from_dense(layer, order, counts.cpu())
