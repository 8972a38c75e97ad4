"""The explainers by id (filled in by the package's ``__init__``)."""

from __future__ import annotations

from typing import Any

from tokensieve.explain.base import Explainer
from tokensieve.registry import instantiate

EXPLAINERS: dict[str, type[Explainer]] = {}


def get_explainer(method: str | Explainer, **params: Any) -> Explainer:
    return instantiate(EXPLAINERS, Explainer, "explain method", method, params)
