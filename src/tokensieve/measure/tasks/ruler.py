"""Synthetic long-context tasks in the style of RULER (Hsieh et al., 2024), generated offline.

Every context is compressed *before* its question is seen (the question and the answer prefix come
after compression), so these measure what a compressed cache still knows, for any later question.
The answer prefix starts the answer for the model (RULER does the same), which keeps a 135M model on task.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tokensieve.measure.tasks.base import Item, Question, Sample, Task
from tokensieve.measure.tasks.haystack import HAYSTACKS, build, sentences
from tokensieve.measure.tasks.words import WORDS
from tokensieve.runtime.prompts import PromptFormat

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


def _var_name(rng: random.Random, used: set[str]) -> str:
    while True:
        v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if v not in used:
            used.add(v)
            return v


@dataclass
class VariableTracking(Task):
    """A chain ``VAR A = 12345. VAR B = A. VAR C = B. ...`` (``hops`` assignments after the first), its
    statements in order at random depths of a filler or prose haystack. Question: every variable that
    holds the value. Scoring: ``recall`` (fraction of the chain's variable names in the answer)."""

    name = "vt"
    kind = "retrieval"
    hops: int = 4
    haystack: str = "filler"

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        rng = self.rng(n_tokens, index, seed)
        used: set[str] = set()
        value = str(rng.randint(10_000, 99_999))
        names = [_var_name(rng, used) for _ in range(self.hops + 1)]
        depths = sorted(rng.random() for _ in names)
        statements = [f"VAR {names[0]} = {value}."] + [
            f"VAR {names[i]} = {names[i - 1]}." for i in range(1, len(names))
        ]
        header = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
        built = build(
            tokenizer, n_tokens, sentences(self.haystack, rng), list(zip(depths, statements, strict=True)), header
        )
        q = f"Find all variables that are assigned the value {value} in the text above."
        prefix = (
            f"According to the chain(s) of variable assignment in the text above, {len(names)} variables are "
            f"assigned the value {value}, they are:"
        )
        items = [Item(n, d) for n, d in zip(names, built.depths, strict=True)]
        return Sample(
            self.spec(),
            index,
            n_tokens,
            context=built.context,
            questions=[Question(q, items, "recall", prefix, 8 * len(names) + 8)],
            meta={"haystack": self.haystack, "context_tokens": built.n_tokens},
        )


def _fit(tokenizer: PreTrainedTokenizerBase, n_tokens: int, make) -> tuple[str, int, object]:
    """The largest ``make(n_entries)`` whose context fits in ``n_tokens`` (binary search on entries)."""
    fmt = PromptFormat(tokenizer)
    lo, hi = 1, max(2, n_tokens)
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        text, extra = make(mid)
        n = len(fmt.context_ids(text))
        if n <= n_tokens:
            best, lo = (text, n, extra), mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise ValueError(f"{n_tokens} tokens are too few for this task")
    return best


@dataclass
class CommonWords(Task):
    """A numbered list of words in which ``common`` words make up ``share`` of the entries and every other
    word appears ``rare`` times or, in long lists, as few times as the vocabulary allows, always at least
    two fewer than the common ones (RULER's cwe). Question: the ``common`` most common words.
    Scoring: ``recall`` (fraction of the common words in the answer)."""

    name = "cwe"
    kind = "retrieval"
    common: int = 5
    share: float = 0.25
    rare: int = 2

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        header = (
            "Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n"
        )

        def make(n_entries: int):
            rng = self.rng(n_tokens, index, seed)  # the same words for every trial length
            words = list(WORDS)
            rng.shuffle(words)
            common, others = words[: self.common], words[self.common :]
            # the other words repeat as little as the vocabulary allows; the common ones stay strictly ahead
            n_common = max(1, round(self.share * n_entries / self.common))
            n_rest = max(0, n_entries - n_common * self.common)
            per_other = max(self.rare, -(-n_rest // len(others)))
            n_common = max(n_common, per_other + 2)
            entries = [w for w in common for _ in range(n_common)]
            entries += [others[i % len(others)] for i in range(max(0, n_entries - len(entries)))]
            rng.shuffle(entries)
            body = "\n".join(f"{j + 1}. {w}" for j, w in enumerate(entries))
            return header + body, common

        text, n, common = _fit(tokenizer, n_tokens, make)
        q = f"What are the {self.common} most common words in the above list?"
        prefix = f"The top {self.common} words that appear most often in the list are:"
        return Sample(
            self.spec(),
            index,
            n_tokens,
            context=text,
            questions=[Question(q, [Item(w) for w in common], "recall", prefix, 6 * self.common + 8)],
            meta={"context_tokens": n},
        )


@dataclass
class FrequentWords(Task):
    """Coded text: made-up words drawn from a Zipf distribution (exponent ``alpha``), where the ``top``
    most frequent words are strictly more frequent than the rest (RULER's fwe). Question: the ``top`` most
    frequent coded words. Scoring: ``recall`` (fraction of them in the answer)."""

    name = "fwe"
    kind = "retrieval"
    top: int = 3
    alpha: float = 2.0
    vocab: int = 200

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        header = (
            "Read the following coded text and track the frequency of each coded word. Find the "
            f"{self.top} most frequently appeared coded words.\n"
        )

        def make(n_words: int):
            rng = self.rng(n_tokens, index, seed)
            vocab: list[str] = []
            used: set[str] = set()
            while len(vocab) < self.vocab:
                w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
                if w not in used:
                    used.add(w)
                    vocab.append(w)
            weights = [1.0 / (r + 1) ** self.alpha for r in range(self.vocab)]
            words = rng.choices(vocab, weights, k=n_words)
            counts = Counter(words).most_common()
            top = [w for w, _ in counts[: self.top]]
            # ties at the boundary make the answer ambiguous: thin the others below the last winner
            limit = counts[self.top - 1][1] - 1
            spare = [w for w in vocab[self.vocab // 2 :] if w not in top]  # rare words
            while True:
                over = [w for w, c in Counter(words).items() if w not in top and c > limit]
                if not over:
                    break
                for w in over:
                    words[words.index(w)] = rng.choice(spare)
            body = " ".join(words)
            return header + body, top

        text, n, top = _fit(tokenizer, n_tokens, make)
        q = (
            f"Do not provide any explanation. What are the {self.top} most frequently appeared words in the "
            "above coded text?"
        )
        prefix = f"According to the coded text above, the {self.top} most frequently appeared words are:"
        return Sample(
            self.spec(),
            index,
            n_tokens,
            context=text,
            questions=[Question(q, [Item(w) for w in top], "recall", prefix, 24)],
            meta={"context_tokens": n},
        )
