from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tokensieve.explain.base import Explainer
from tokensieve.explain.replace import PredictionReplacer
from tokensieve.explain.target import ExplainError, Problem


@dataclass
class ReAGent(Explainer):
    """Gradient-free and model-agnostic. Logit importances start random; each step replaces a random
    ``ratio`` of the context tokens (``batch`` draws), and a draw that lowers the target by ``d`` adds
    ``logit(1/2 + d/2)`` to the replaced tokens and ``logit(1/2 - d/2)`` to the others. It stops once the
    top ``keep`` fraction of tokens alone (the rest replaced) keeps every target token among the model's
    ``top_k`` predictions, or after ``max_steps`` (the paper runs to 3000; CPU needs a cap)."""

    id = "reagent"
    paper = "ReAGent: A Model-agnostic Feature Attribution Method for Generative LMs (Zhao & Shan, 2024)"
    rule = "replace 30% at random; raise tokens whose replacement lowers p(target); stop when top-30% keep top-3"

    ratio: float = 0.3
    keep: float = 0.3
    top_k: int = 3
    batch: int = 5
    max_steps: int = 30
    seed: int = 0
    replacer: Any = field(default_factory=PredictionReplacer)
    steps_run: int = field(init=False, default=0)

    def stopped(self, problem: Problem, importance: Tensor, gen: torch.Generator) -> bool:
        """The stopping rule: keep the top ``keep`` fraction by importance, replace the rest, and test whether
        the model still ranks every target token among its ``top_k`` predictions."""
        n = problem.n_context
        keep = max(1, round(self.keep * n))
        mask = torch.ones(1, n, dtype=torch.bool)
        mask[0, importance.topk(keep).indices] = False
        return bool(problem.top_tokens_kept_in_top_k(self.replacer(mask, gen), self.top_k)[0])

    def attribute(self, problem: Problem) -> Tensor:
        if not 0 < self.ratio < 1 or not 0 < self.keep <= 1:
            raise ExplainError(f"reagent ratio {self.ratio} and keep {self.keep} must be fractions in (0, 1)")
        gen = torch.Generator().manual_seed(self.seed)
        n = problem.n_context
        self.replacer.fit(problem)
        base = problem.score(problem.ids[None])
        logit = torch.rand(n, generator=gen)
        self.steps_run = 0
        while self.steps_run < self.max_steps:
            self.steps_run += 1
            masks = torch.rand(self.batch, n, generator=gen) < self.ratio
            delta = (base - problem.score(self.replacer(masks, gen))).clamp(-0.999, 0.999)  # [batch]
            signed = torch.where(masks, delta[:, None], -delta[:, None])
            logit += torch.logit(0.5 + 0.5 * signed).sum(0)
            if self.stopped(problem, logit, gen):
                break
        return torch.softmax(logit, -1)
