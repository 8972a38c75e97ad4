from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.explain.base import Explainer
from tokensieve.explain.target import Problem


def context_gradient(problem: Problem, embeds: Tensor) -> Tensor:
    """d score / d embeddings ``[B, n_context, d]`` at prompt embeddings ``[B, P, d]`` (one backward; memory
    grows linearly with the prompt: SDPA's fused kernels keep no T x T matrix for the backward)."""
    embeds = embeds.detach().requires_grad_(True)
    with torch.enable_grad():
        problem.score_embeds(embeds).sum().backward()
    return embeds.grad[:, problem.ctx_start : problem.ctx_end]


@dataclass
class GradXInput(Explainer):
    """Gradient times input: the first-order Taylor term of each token's embedding, summed over the
    embedding dimensions (signed: positive tokens raise the target)."""

    id = "grad_x_input"
    paper = "Learning Important Features Through Propagating Activation Differences (Shrikumar et al., 2017)"
    rule = "sum_d (d s / d e_td) * e_td over the embedding of each context token t"

    def attribute(self, problem: Problem) -> Tensor:
        embeds = problem.embed(problem.ids[None]).detach()
        grad = context_gradient(problem, embeds)
        return (grad * embeds[:, problem.ctx_start : problem.ctx_end]).sum(-1)[0].float().cpu()
