from __future__ import annotations

from dataclasses import dataclass

from tokensieve.kv.budget.base import EqualLayers


@dataclass
class Uniform(EqualLayers):
    """The same budget in every layer and head."""

    id = "uniform"
    paper = "baseline"
    rule = "the same keep count in every layer and head"
