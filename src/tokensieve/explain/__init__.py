"""Which context tokens an answer rests on: attribution methods, their faithfulness, words, a sentence.

ex = tokensieve.explain(model, tok, context, "What is the pass key?", method=["reagent", "snapkv"])
ex.verbalize(); ex.top(); ex.faithfulness; ex.to_html("out.html")
"""

from __future__ import annotations

import sys
import types

from tokensieve.explain.api import explain, make_problem
from tokensieve.explain.base import Explainer
from tokensieve.explain.methods.attention import Attention
from tokensieve.explain.methods.grad_x_input import GradXInput
from tokensieve.explain.methods.integrated_gradients import IntegratedGradients
from tokensieve.explain.methods.kvscore import KVScore, kv_explainer
from tokensieve.explain.methods.occlusion import Occlusion
from tokensieve.explain.methods.reagent import ReAGent
from tokensieve.explain.methods.rollout import Rollout
from tokensieve.explain.registry import EXPLAINERS, get_explainer
from tokensieve.explain.result import Explanation
from tokensieve.explain.target import ExplainError, Problem, Target
from tokensieve.kv import REGISTRY as KV_REGISTRY
from tokensieve.kv import Method


def _scores_only(cls: type[Method]) -> bool:
    # a score read as a ranking: methods that act on the cache themselves or need a calibration are left out
    return cls.act is Method.act and not cls.changes_prefill and cls.bind is Method.bind


EXPLAINERS.update({cls.id: cls for cls in (ReAGent, Occlusion, GradXInput, IntegratedGradients, Attention, Rollout)})
EXPLAINERS.update({mid: kv_explainer(mid) for mid, cls in KV_REGISTRY.items() if _scores_only(cls)})


class _CallablePackage(types.ModuleType):
    """``tokensieve.explain(...)`` calls ``explain`` while ``tokensieve.explain.faithfulness`` stays a module."""

    def __call__(self, *args, **kwargs) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = [
    "EXPLAINERS",
    "Attention",
    "ExplainError",
    "Explainer",
    "Explanation",
    "GradXInput",
    "IntegratedGradients",
    "KVScore",
    "Occlusion",
    "Problem",
    "ReAGent",
    "Rollout",
    "Target",
    "explain",
    "get_explainer",
    "make_problem",
]
