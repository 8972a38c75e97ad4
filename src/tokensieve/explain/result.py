"""The typed result of ``tokensieve.explain``: tokens, scores per method, words, target, faithfulness."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from tokensieve.explain.target import ExplainError, Target
from tokensieve.explain.units import Unit, score_units, spans, word_units
from tokensieve.explain.verbalize import verbalize


@dataclass
class Explanation:
    context: str
    tokens: list[str]  # the context's tokens as text
    offsets: list[tuple[int, int]]  # their character spans in ``context``
    answer: str
    target: Target
    scores: dict[str, Tensor]  # method id -> [n_tokens]
    seconds: dict[str, float]
    faithfulness: dict[str, dict[str, float]] = field(default_factory=dict)
    agreement: list[dict[str, Any]] = field(default_factory=list)
    question: str = ""

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def _method(self, method: str | None) -> str:
        m = method or self.methods[0]
        if m not in self.scores:
            raise ExplainError(f"no attribution by {m!r} here; this explanation has: {', '.join(self.methods)}")
        return m

    def units(self, method: str | None = None) -> list[Unit]:
        """Words (a multi-token number is one) with their summed scores and shares for ``method``."""
        m = self._method(method)
        return score_units(word_units(self.context, self.offsets), self.scores[m].tolist())

    def top(self, method: str | None = None, n: int = 5) -> list[dict[str, Any]]:
        return [
            {"text": u.text, "share": u.share, "score": u.score, "line": u.line, "tokens": [u.start, u.end]}
            for u in spans(self.context, self.units(method), n)
        ]

    def verbalize(self, method: str | None = None, n: int = 3) -> str:
        m = self._method(method)
        return verbalize(self.answer, self.units(m), m, n, self.context)

    def to_dict(self, method: str | None = None) -> dict[str, Any]:
        m = self._method(method)
        return {
            "answer": self.answer,
            "method": m,
            "methods": self.methods,
            "target": self.target.describe(),
            "tokens": self.tokens,
            "scores": {k: [float(x) for x in v] for k, v in self.scores.items()},
            "top": self.top(m),
            "verbalization": self.verbalize(m),
            "verbalizations": {k: self.verbalize(k) for k in self.methods},
            "faithfulness": self.faithfulness,
            "agreement": self.agreement,
            "seconds": self.seconds,
        }

    def to_html(self, path: str | None = None) -> str:
        from tokensieve.explain.html import render

        html = render(self)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(html)
        return html
