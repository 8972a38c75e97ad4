from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.explain.base import Explainer
from tokensieve.explain.methods.grad_x_input import context_gradient
from tokensieve.explain.target import ExplainError, Problem


@dataclass
class IntegratedGradients(Explainer):
    """Integrate the gradient along the straight path from the baseline token's embedding to each context
    token's embedding (the question and the target stay as they are), by the midpoint rule with ``steps``
    points, one backward at a time so memory stays that of one gradient."""

    id = "integrated_gradients"
    paper = "Axiomatic Attribution for Deep Networks (Sundararajan et al., 2017)"
    rule = "(e - e0) . mean_{a in midpoints} d s / d e (e0 + a (e - e0)), per context token"

    steps: int = 16

    def attribute(self, problem: Problem) -> Tensor:
        if self.steps < 1:
            raise ExplainError(f"integrated_gradients steps {self.steps} must be at least 1")
        x = problem.embed(problem.ids[None]).detach()
        c = slice(problem.ctx_start, problem.ctx_end)
        x0 = x.clone()
        x0[:, c] = problem.embed(torch.tensor([problem.baseline_id], device=x.device)).detach()
        total = torch.zeros_like(x[:, c])
        for i in range(self.steps):
            a = (i + 0.5) / self.steps
            total += context_gradient(problem, x0 + a * (x - x0))
        return ((x - x0)[:, c] * total / self.steps).sum(-1)[0].float().cpu()
