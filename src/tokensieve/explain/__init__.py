"""Which context tokens an answer rests on: attribution methods, their faithfulness, words, a sentence.

ex = tokensieve.explain(model, tok, context, "What is the pass key?", method=["reagent", "snapkv"])
ex.verbalize(); ex.top(); ex.faithfulness; ex.to_html("out.html")
"""

from __future__ import annotations

import sys
import types

from tokensieve.explain.api import explain, make_problem
from tokensieve.explain.base import Explainer
from tokensieve.explain.methods import (
    EXPLAINERS,
    Attention,
    GradXInput,
    IntegratedGradients,
    KVScore,
    Occlusion,
    ReAGent,
    Rollout,
    get_explainer,
)
from tokensieve.explain.result import Explanation
from tokensieve.explain.target import ExplainError, Problem, Target


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
