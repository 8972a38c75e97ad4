"""The explainers by id: one small file per attribution method, and every KV-cache score read as an explanation
(``kv_explainer``: one generated class per score-only KV method, listed under the KV family, not here)."""

from __future__ import annotations

from typing import Any

from tokensieve.explain.base import Explainer
from tokensieve.explain.methods.attention import Attention
from tokensieve.explain.methods.grad_x_input import GradXInput
from tokensieve.explain.methods.integrated_gradients import IntegratedGradients
from tokensieve.explain.methods.kvscore import KVScore, kv_explainer
from tokensieve.explain.methods.occlusion import Occlusion
from tokensieve.explain.methods.reagent import ReAGent
from tokensieve.explain.methods.rollout import Rollout
from tokensieve.kv import REGISTRY as KV_REGISTRY
from tokensieve.kv import Method
from tokensieve.registry import instantiate, register_family


def _scores_only(cls: type[Method]) -> bool:
    # a score read as a ranking: methods that act on the cache themselves or need a calibration are left out
    return cls.act is Method.act and not cls.changes_prefill and cls.bind is Method.bind


def _listing(cls: type[Explainer]) -> dict[str, Any] | None:
    # a KV score's row is its KV method's (`tokensieve methods` lists it there)
    return cls().describe() if cls.kind == "attribution" else None


EXPLAINERS: dict[str, type[Explainer]] = {
    cls.id: cls for cls in (ReAGent, Occlusion, GradXInput, IntegratedGradients, Attention, Rollout)
}
EXPLAINERS.update({mid: kv_explainer(mid) for mid, cls in KV_REGISTRY.items() if _scores_only(cls)})
register_family("attribution", EXPLAINERS, "an attribution method: use tokensieve explain --method {id}", __name__,
                _listing)  # fmt: skip


def get_explainer(method: str | Explainer, **params: Any) -> Explainer:
    return instantiate(EXPLAINERS, Explainer, "explain method", method, params)


__all__ = [
    "EXPLAINERS", "Attention", "Explainer", "GradXInput", "IntegratedGradients", "KVScore", "Occlusion", "ReAGent",
    "Rollout", "get_explainer", "kv_explainer",
]  # fmt: skip
