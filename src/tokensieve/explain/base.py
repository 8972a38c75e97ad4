"""The base of every attribution method: a dataclass that turns a ``Problem`` into one score per
context token (larger = the target rests more on it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from torch import Tensor

from tokensieve.explain.target import Problem


@dataclass
class Explainer(ABC):
    id: ClassVar[str]
    paper: ClassVar[str]
    rule: ClassVar[str]
    kind: ClassVar[str] = "attribution"

    @abstractmethod
    def attribute(self, problem: Problem) -> Tensor:
        """Scores ``[n_context]`` (float, CPU) for the context tokens of ``problem``."""

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def describe(self) -> dict[str, Any]:
        plain = (int, float, str, bool, type(None), dict, list)
        defaults = {k: v if isinstance(v, plain) else type(v).__name__ for k, v in self.params().items()}
        return {"id": self.id, "kind": self.kind, "paper": self.paper, "rule": self.rule, "defaults": defaults}
