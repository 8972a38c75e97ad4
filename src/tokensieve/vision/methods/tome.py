from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.errors import BudgetError
from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.tokens import MergePlan, Tokens, match


@dataclass
class ToMe(VisionMethod):
    """Merge ``r`` tokens per layer by bipartite soft matching on the layer's own head-mean keys, between
    its attention and its MLP as in the paper (the engine's ``stage="mlp"`` hooks), from layer ``at`` on;
    later attention adds log(size). ``keep`` (when ``r`` is not given) picks the constant r that leaves
    ``keep`` of the patches after the last merge."""

    id = "tome"
    paper = "Token Merging: Your ViT But Faster (Bolya et al., ICLR 2023)"
    rule = (
        "alternate A/B, match A->B by key cosine, merge the r best pairs (size-weighted) between attention "
        "and MLP, +log(size) in attention"
    )
    stage = "mlp"
    first_at = 0  # the merge reads the same layer's keys: layer 0 can merge already

    r: int | None = None
    at: int = 0

    def r_for(self, n_layers: int, n_patches: int) -> int:
        if self.r is not None:
            return self.r
        return math.ceil((1 - self.keep) * n_patches / (n_layers - self.at) - 1e-9)

    def target(self, layer: int, n_layers: int, st: Tokens, n_now: int) -> int | None:
        if self.at >= n_layers:
            raise BudgetError(f"at={self.at} is past the model's {n_layers} layers: pick at < {n_layers}")
        r = self.r_for(n_layers, st.n_patches)
        if self.r is not None and r > st.n_patches // 2:
            raise BudgetError(f"r={r} is too large for {st.n_patches} patch tokens: merge at most {st.n_patches // 2}")
        if layer < self.at or r == 0:
            return None
        floor = self.n_keep(st.n_patches) if self.r is None else 1
        n = max(n_now - min(r, n_now // 2), floor)
        return n if n < n_now else None

    def candidates(self, x: Tensor, st: Tokens, r: int) -> tuple[Tensor, Tensor]:
        n = x.shape[1] - st.n_special
        idx = torch.arange(n, device=x.device).expand(x.shape[0], -1)
        return idx[:, ::2], idx[:, 1::2]

    def plan(self, x: Tensor, st: Tokens, n: int) -> MergePlan:
        r = x.shape[1] - st.n_special - n
        a, b = self.candidates(x, st, r)
        return match(x, st, st.keys, a, b, r)
