"""Synthetic long-context tasks in the style of RULER (Hsieh et al., 2024), generated offline.

Every context is compressed *before* its question is seen (the question and the answer prefix come
after compression), so these measure what a compressed cache still knows, for any later question.
The answer prefix starts the answer for the model (RULER does the same), which keeps a 135M model on task.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tokensieve.measure.tasks.base import Item, Question, Sample, Task
from tokensieve.measure.tasks.haystack import HAYSTACKS, build, sentences
from tokensieve.measure.tasks.words import WORDS

VALUES = ("number", "word", "uuid")
GOLDEN = 0.6180339887498949


def spread_depth(index: int) -> float:
    """Depth of the index-th sample: a golden-ratio sequence covers [0, 1] evenly for any sample count."""
    return (0.5 + index * GOLDEN) % 1.0


def make_value(kind: str, rng: random.Random, avoid: set[str]) -> str:
    while True:
        if kind == "number":
            v = str(rng.randint(1_000_000, 9_999_999))
        elif kind == "word":
            v = rng.choice(WORDS)
        elif kind == "uuid":
            v = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            raise ValueError(f"value kind {kind!r} must be one of {', '.join(VALUES)}")
        if v not in avoid:
            avoid.add(v)
            return v


def _names(kind: str) -> tuple[str, str]:
    return {"number": ("number", "numbers"), "word": ("word", "words"), "uuid": ("uuid", "uuids")}[kind]


def _needle(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {_names(kind)[1]} for {key} is: {value}."


def _header(kind: str) -> str:
    plural = _names(kind)[1]
    return (
        f"Some special magic {plural} are hidden within the following text. Make sure to memorize it. "
        f"I will quiz you about the {plural} afterwards.\n"
    )


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


@dataclass
class NeedleTask(Task):
    """Shared machinery of the needle tasks: keys are words, values numbers, words or UUIDs."""

    haystack: str = "filler"
    value: str = "number"

    def _check(self) -> None:
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"haystack {self.haystack!r} must be one of {', '.join(HAYSTACKS)}")
        if self.value not in VALUES:
            raise ValueError(f"value {self.value!r} must be one of {', '.join(VALUES)}")

    def _budget(self, tokenizer: PreTrainedTokenizerBase, n_values: int) -> int:
        per = {"number": 10, "word": 4, "uuid": 30}[self.value]
        return per * n_values + 8

    def _sample(
        self,
        tokenizer: PreTrainedTokenizerBase,
        n_tokens: int,
        index: int,
        seed: int,
        rng: random.Random,
        needles: list[tuple[float, str, str]],  # (depth, key, value)
        questions: list[tuple[str, list[int], str, str]],  # (text, needle indices, rule, answer prefix)
        meta: dict,
    ) -> Sample:
        self._check()
        built = build(
            tokenizer,
            n_tokens,
            sentences(self.haystack, rng),
            [(d, _needle(self.value, k, v)) for d, k, v in needles],
            header=_header(self.value),
        )
        qs = []
        for text, which, rule, prefix in questions:
            items = [Item(needles[i][2], built.depths[i]) for i in which]
            qs.append(Question(text, items, rule, prefix, self._budget(tokenizer, len(items))))
        return Sample(
            self.spec(),
            index,
            n_tokens,
            context=built.context,
            questions=qs,
            meta={"haystack": self.haystack, "value": self.value, "context_tokens": built.n_tokens, **meta},
        )


@dataclass
class NiahSingle(NeedleTask):
    """One needle ("One of the special magic numbers for <key> is: <value>.") in a haystack of repeated
    filler or natural prose, at a depth that spreads evenly over the samples (golden-ratio sequence).
    Question: the value for the key. Scoring: ``contains`` (1 if the value appears in the answer)."""

    name = "niah_single"
    kind = "retrieval"

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        rng = self.rng(n_tokens, index, seed)
        used: set[str] = set()
        key = rng.choice(WORDS)
        used.add(key)
        value = make_value(self.value, rng, used)
        depth = spread_depth(index + seed)
        one, _many = _names(self.value)
        q = f"What is the special magic {one} for {key} mentioned in the provided text?"
        prefix = f"The special magic {one} for {key} mentioned in the provided text is"
        return self._sample(
            tokenizer, n_tokens, index, seed, rng, [(depth, key, value)], [(q, [0], "contains", prefix)], {}
        )


@dataclass
class NiahMultiKey(NeedleTask):
    """One target needle plus ``distractors`` needles with other keys (same template, same kind of value),
    all at random depths. Question: the target key's value. Scoring: ``contains`` (the target value)."""

    name = "niah_multikey"
    kind = "retrieval"
    distractors: int = 3

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        rng = self.rng(n_tokens, index, seed)
        used: set[str] = set()
        keys = []
        while len(keys) < self.distractors + 1:
            k = rng.choice(WORDS)
            if k not in used:
                used.add(k)
                keys.append(k)
        needles = [(rng.random(), k, make_value(self.value, rng, used)) for k in keys]
        needles[0] = (spread_depth(index + seed), *needles[0][1:])  # the target spreads like niah_single
        one, _ = _names(self.value)
        q = f"What is the special magic {one} for {keys[0]} mentioned in the provided text?"
        prefix = f"The special magic {one} for {keys[0]} mentioned in the provided text is"
        return self._sample(
            tokenizer,
            n_tokens,
            index,
            seed,
            rng,
            needles,
            [(q, [0], "contains", prefix)],
            {"distractors": self.distractors},
        )


@dataclass
class NiahMultiAsk(NeedleTask):
    """``asks`` needles with different keys at random depths, and one question per key, asked one after
    another of the same compressed context (the use a question-unseen cache serves: several questions over one
    document). Scoring: ``contains`` per question, the sample's score is their mean. In the query-aware setting
    only the first question is in the compressed prompt."""

    name = "niah_multiask"
    kind = "retrieval"
    asks: int = 3

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        rng = self.rng(n_tokens, index, seed)
        used: set[str] = set()
        keys = []
        while len(keys) < self.asks:
            k = rng.choice(WORDS)
            if k not in used:
                used.add(k)
                keys.append(k)
        needles = [(rng.random(), k, make_value(self.value, rng, used)) for k in keys]
        one, _ = _names(self.value)
        questions = [
            (
                f"What is the special magic {one} for {k} mentioned in the provided text?",
                [i],
                "contains",
                f"The special magic {one} for {k} mentioned in the provided text is",
            )
            for i, k in enumerate(keys)
        ]
        return self._sample(tokenizer, n_tokens, index, seed, rng, needles, questions, {"asks": self.asks})


@dataclass
class NiahMultiValue(NeedleTask):
    """One key with ``values`` different values, each in its own needle at a random depth.
    Question: all values of the key. Scoring: ``recall`` (fraction of the values in the answer)."""

    name = "niah_multivalue"
    kind = "retrieval"
    values: int = 4

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        rng = self.rng(n_tokens, index, seed)
        used: set[str] = set()
        key = rng.choice(WORDS)
        used.add(key)
        needles = [(rng.random(), key, make_value(self.value, rng, used)) for _ in range(self.values)]
        _, many = _names(self.value)
        q = f"What are all the special magic {many} for {key} mentioned in the provided text?"
        prefix = f"The special magic {many} for {key} mentioned in the provided text are"
        return self._sample(
            tokenizer, n_tokens, index, seed, rng, needles, [(q, list(range(self.values)), "recall", prefix)], {}
        )


@dataclass
class NiahMultiQuery(NeedleTask):
    """``queries`` keys, one value each, at random depths. One question asks for the values of all of
    them (RULER's multi-query). Scoring: ``recall`` (fraction of the values in the answer)."""

    name = "niah_multiquery"
    kind = "retrieval"
    queries: int = 4

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        rng = self.rng(n_tokens, index, seed)
        used: set[str] = set()
        keys = []
        while len(keys) < self.queries:
            k = rng.choice(WORDS)
            if k not in used:
                used.add(k)
                keys.append(k)
        needles = [(rng.random(), k, make_value(self.value, rng, used)) for k in keys]
        _, many = _names(self.value)
        names = ", ".join(keys[:-1]) + f" and {keys[-1]}"
        q = f"What are all the special magic {many} for {names} mentioned in the provided text?"
        prefix = f"The special magic {many} for {names} mentioned in the provided text are"
        return self._sample(
            tokenizer, n_tokens, index, seed, rng, needles, [(q, list(range(self.queries)), "recall", prefix)], {}
        )
