"""The base of every attribution method: a dataclass that turns a ``Problem`` into one score per
context token (larger = the target rests more on it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.explain.target import Problem
from tokensieve.registry import Registered


@dataclass
class Explainer(Registered, ABC):
    kind: ClassVar[str] = "attribution"  # `tokensieve methods` lists it; `tokensieve explain` runs it

    @abstractmethod
    def attribute(self, problem: Problem) -> Tensor:
        """Scores ``[n_context]`` (float, CPU) for the context tokens of ``problem``."""
