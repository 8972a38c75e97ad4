"""What a benchmark task produces (a ``Sample``) and the scoring rules tasks share.

A task is deterministic: ``Task.sample(tokenizer, n_tokens, index, seed)`` returns the same sample for
the same arguments on any machine with the same corpus (``corpus.fingerprint()``). Lengths are measured
in the model's own tokens, including the chat template's context part.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerBase

from tokensieve.spec import join_spec

RULES = ("contains", "recall", "exact")


@dataclass
class Item:
    """One thing the answer must contain, and where it sits in the context (fraction of the tokens)."""

    text: str
    depth: float | None = None


@dataclass
class Question:
    text: str
    items: list[Item]
    rule: str  # contains | recall | exact (see ``score``)
    answer_prefix: str = ""
    max_new_tokens: int = 16


@dataclass
class Sample:
    """A context with known answers (retrieval) or a true continuation (fidelity)."""

    task: str
    index: int
    n_tokens: int  # the requested length
    context: str | None = None  # text, wrapped by the chat template (retrieval)
    context_ids: list[int] | None = None  # raw token ids (fidelity: plain language modelling)
    questions: list[Question] = field(default_factory=list)
    continuation: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def item_hits(answer: str, items: list[Item]) -> list[bool]:
    """Whether each item appears in the answer (case- and punctuation-insensitive, whole words)."""
    norm = f" {normalize(answer)} "
    return [f" {normalize(it.text)} " in norm for it in items]


def score(answer: str, question: Question) -> tuple[float, list[bool]]:
    """The question's rule, in [0, 1], and per-item hits.

    - ``contains``: 1 if every expected item appears in the answer (one item for single needles).
    - ``recall``: the fraction of expected items that appear in the answer (RULER's multi-item rule).
    - ``exact``: 1 if the normalized answer equals the normalized single item.
    """
    hits = item_hits(answer, question.items)
    if question.rule == "contains":
        return float(all(hits)), hits
    if question.rule == "recall":
        return sum(hits) / len(hits), hits
    if question.rule == "exact":
        ok = normalize(answer) == normalize(question.items[0].text)
        return float(ok), [ok]
    raise ValueError(f"unknown scoring rule {question.rule!r}; one of {', '.join(RULES)}")


@dataclass
class Task(ABC):
    """A generator of samples. Subclasses are dataclasses whose fields are the task's parameters;
    their docstring states what the sample contains and how it is scored."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "retrieval" or "fidelity"

    @abstractmethod
    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample: ...

    def rng(self, n_tokens: int, index: int, seed: int) -> random.Random:
        """A generator seeded by the task, its parameters, the length, the index and the seed (str seeds are
        hashed with SHA-512 by ``random``, so this does not depend on PYTHONHASHSEED)."""
        return random.Random(f"{self.spec()}|{n_tokens}|{index}|{seed}")

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def spec(self) -> str:
        """The task's id with the parameters that differ from the defaults, e.g. ``niah_single:value=uuid``."""
        default = type(self)()
        return join_spec(self.name, {k: v for k, v in self.params().items() if getattr(default, k) != v})
