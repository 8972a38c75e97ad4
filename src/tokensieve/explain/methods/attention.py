from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.scores.attention import attention_probs
from tokensieve.explain.base import Explainer
from tokensieve.explain.observe import observed_prefill, target_rows
from tokensieve.explain.target import ExplainError, Problem


@dataclass
class Attention(Explainer):
    """Raw attention from the rows that predict the target to each context token, averaged over the
    target rows, every query head and the chosen layers (``layers="all"`` or ``"last"``): the stated
    aggregation. Only those few rows are computed (``[rows, T]`` per head), never ``T x T``."""

    id = "attention"
    paper = "baseline (A Song of (Dis)agreement, Neely et al., 2022)"
    rule = "mean over layers, heads and target rows of A[row, j]"

    layers: str = "all"

    def attribute(self, problem: Problem) -> Tensor:
        if self.layers not in ("all", "last"):
            raise ExplainError(f"attention layers={self.layers!r} must be 'all' or 'last'")
        m = len(problem.target.ids)
        cache, obs = observed_prefill(problem, Needs(window=m), with_answer=True)
        want = target_rows(problem) - (problem.ids.shape[0] - 1)  # offsets within the captured window
        layers = sorted(obs) if self.layers == "all" else [max(obs)]
        total = torch.zeros(problem.ids.shape[0] + m - 1)
        for i in layers:
            o, layer = obs[i], cache.layers[i]
            q, rows = o.queries[:, :, :, want], o.rows[want]
            probs = attention_probs(q.float(), layer.keys.float(), rows, layer.valid, o.scaling)
            total[: probs.shape[-1]] += probs.mean(dim=(0, 1, 2, 3)).cpu()
        return (total / len(layers))[problem.ctx_start : problem.ctx_end]
