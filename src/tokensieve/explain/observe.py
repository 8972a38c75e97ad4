"""One observing prefill for the attention-based explainers: the KV cache's own ``observe_prefill`` (the same path
the compression methods score from, with its engagement check), so no attention matrix is ever built for all
rows at once."""

from __future__ import annotations

import torch
from torch import Tensor

from tokensieve.core.observe.capture import LayerObservation, Needs
from tokensieve.explain.target import ExplainError, Problem
from tokensieve.kv import CompressibleCache, observe_prefill


def observed_prefill(
    problem: Problem, needs: Needs, with_answer: bool
) -> tuple[CompressibleCache, dict[int, LayerObservation]]:
    """Run the prompt (plus the answer's tokens but the last when ``with_answer``: the rows that predict
    the answer) once, recording ``needs`` per attention layer. Raises if no layer was observed."""
    model = problem.model
    ids = problem.ids
    if with_answer and len(problem.target.ids) > 1:
        ids = torch.cat([ids, torch.tensor(problem.target.ids[:-1], device=ids.device)])
    obs = observe_prefill(model, ids[None], None, needs, "an explanation's observing prefill")
    cache, observations = obs.cache, obs.observations
    if not observations:
        raise ExplainError("the prefill observed no attention layer: call tokensieve.prepare(model) first")
    return cache, observations


def target_rows(problem: Problem) -> Tensor:
    """Indices (in the prompt + answer[:-1] sequence) of the rows whose outputs predict the target."""
    p, m = problem.ids.shape[0], len(problem.target.ids)
    rows = torch.arange(p - 1, p - 1 + m)
    return rows if problem.target.position is None else rows[problem.target.position : problem.target.position + 1]
