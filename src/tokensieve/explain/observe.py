"""One observing prefill for the attention-based explainers, through the KV-cache half's machinery:
a ``SieveCache`` whose layers hand each layer's queries to ``observe`` (the same path the compression
methods score from), so no attention matrix is ever built for all rows at once."""

from __future__ import annotations

import torch
from torch import Tensor

from tokensieve.compat import with_cache
from tokensieve.core.observe.capture import LayerObservation, Needs, observe
from tokensieve.core.observe.hooks import prepare
from tokensieve.explain.target import ExplainError, Problem
from tokensieve.kv.cache import SieveCache, SieveLayer


def observed_prefill(
    problem: Problem, needs: Needs, with_answer: bool
) -> tuple[SieveCache, dict[int, LayerObservation]]:
    """Run the prompt (plus the answer's tokens but the last when ``with_answer``: the rows that predict
    the answer) once, recording ``needs`` per attention layer. Raises if no layer was observed."""
    model = problem.model
    prepare(model)
    ids = problem.ids
    if with_answer and len(problem.target.ids) > 1:
        ids = torch.cat([ids, torch.tensor(problem.target.ids[:-1], device=ids.device)])
    cache = SieveCache(model.config)
    observations: dict[int, LayerObservation] = {}

    def record(layer: SieveLayer, query: Tensor, scaling: float) -> None:
        layer.on_attention = None
        observations[layer.layer_idx] = observe(needs, query, layer.keys, layer.valid, scaling)

    for layer in cache.sieve_layers:
        layer.on_attention = record
    with torch.inference_mode():
        model(**with_cache(model, cache, input_ids=ids[None], use_cache=True, logits_to_keep=1))
    if not observations:
        raise ExplainError("the prefill observed no attention layer: call tokensieve.prepare(model) first")
    return cache, observations


def target_rows(problem: Problem) -> Tensor:
    """Indices (in the prompt + answer[:-1] sequence) of the rows whose outputs predict the target."""
    p, m = problem.ids.shape[0], len(problem.target.ids)
    rows = torch.arange(p - 1, p - 1 + m)
    return rows if problem.target.position is None else rows[problem.target.position : problem.target.position + 1]
