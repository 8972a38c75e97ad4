from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tokensieve.explain.base import Explainer
from tokensieve.explain.target import ExplainError, Problem
from tokensieve.kv import finite, get_method, prefill, score_prefill


@dataclass
class KVScore(Explainer):
    """A KV-cache compression score read as an explanation: the prompt (context and question, as in
    query-aware compression) is prefilled once with what ``method`` needs observed, the method scores every
    layer exactly as when it compresses (``tokensieve.kv.score_prefill``: its whole-prefill pass included; its
    always-kept ``+inf`` tokens count as the row's largest finite score), and the scores are min-max scaled per
    layer (layers differ in scale), averaged over KV heads and layers. The question's rows are in the method's
    observation window."""

    id = "kv"
    paper = "tokensieve: the KV-cache half's importance scores (see `tokensieve methods`)"
    rule = "mean over layers of minmax(mean over KV heads of method.score(layer))"
    kind = "kv-cache score"

    method: str = "snapkv"
    method_params: dict[str, Any] = field(default_factory=dict)

    def attribute(self, problem: Problem) -> Tensor:
        m = get_method(self.method, **self.method_params)
        m.bind(problem.model)
        # the KV service, as compression scores: the method's whole-prefill pass (kvzip, surprise) included
        pre = prefill(problem.model, None, problem.ids[None], methods=[m])
        if not pre.observations:
            raise ExplainError("the prefill observed no attention layer: call tokensieve.prepare(model) first")
        scores = score_prefill(pre, m)
        total = torch.zeros(problem.ids.shape[0])
        for score in scores.values():
            s = finite(score.float()).mean(dim=(0, 1)).cpu()  # [T]; always-kept (+inf) tokens at the row's max
            total += (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
        return (total / len(scores))[problem.ctx_start : problem.ctx_end]


def kv_explainer(method: str) -> type[KVScore]:
    """A registry entry for one KV method: ``KVScore`` with ``method`` fixed as its default."""
    cls = type(f"KV_{method}", (KVScore,), {"__annotations__": {"method": str}, "method": method, "id": method})
    return dataclass(cls)
