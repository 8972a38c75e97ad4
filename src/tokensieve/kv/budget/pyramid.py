from __future__ import annotations

from dataclasses import dataclass

from tokensieve.kv.budget.base import Allocator, _round_capped


@dataclass
class Pyramid(Allocator):
    """PyramidKV: budgets fall linearly from the lowest layer to the highest, averaging ``budget``.
    The top layer gets ``budget / beta`` and the bottom ``2 * budget - budget / beta`` (the paper's beta=20);
    a layer cannot hold more than the context, and what a capped layer cannot use goes to the others. kvpress's
    ``PyramidKVPress`` (KVCache-Factory's budgets) differs: it caps the bottom layer at T - 64 (its window) and stays
    uniform unless the top layer's budget is at least 64 (docs/kv-breadth.md, "Per-press agreement")."""

    id = "pyramid"
    paper = "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling (Cai et al., 2024)"
    rule = "layer budgets fall linearly from the lowest layer to the highest"
    beta: float = 20.0

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        if n_layers == 1:
            return [min(budget, n_tokens)]
        top = budget / self.beta
        bottom = 2 * budget - top
        raw = [bottom + (top - bottom) * i / (n_layers - 1) for i in range(n_layers)]
        return _round_capped(raw, budget * n_layers, n_tokens)
