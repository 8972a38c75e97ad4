from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.explain.base import Explainer
from tokensieve.explain.target import ExplainError, Problem


@dataclass
class Occlusion(Explainer):
    """Replace one token (``width=1``) or one span of ``width`` tokens at a time with the baseline token and
    record the drop of the target quantity; every token of a span gets the span's drop. Replacement keeps
    positions in place (deletion would shift every later token)."""

    id = "occlusion"
    paper = "Visualizing and Understanding Convolutional Networks (Zeiler & Fergus, 2014); token/span level"
    rule = "s(x) - s(x with span replaced by the baseline token), spread over the span's tokens"

    width: int = 1
    batch: int = 8

    def attribute(self, problem: Problem) -> Tensor:
        if self.width < 1:
            raise ExplainError(f"occlusion width {self.width} must be a positive number of tokens")
        n = problem.n_context
        starts = list(range(0, n, self.width))
        masks = torch.zeros(len(starts), n, dtype=torch.bool)
        for i, s in enumerate(starts):
            masks[i, s : s + self.width] = True
        base = problem.score(problem.ids[None])
        drops = base - problem.score(problem.replaced(masks), self.batch)
        return (masks.float() * drops[:, None]).sum(0)
