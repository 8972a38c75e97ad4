"""RULER's aggregation and tracing tasks: variable tracking, common and frequent words."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tokensieve.measure.tasks.base import Item, Question, Sample, Task
from tokensieve.measure.tasks.haystack import build, largest_that_fits, sentences
from tokensieve.measure.tasks.words import WORDS
from tokensieve.runtime.prompts import PromptFormat


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

    def attempt(m: int) -> tuple[str, int, object] | None:
        text, extra = make(m)
        n = len(fmt.context_ids(text))
        return (text, n, extra) if n <= n_tokens else None

    best = largest_that_fits(max(2, n_tokens), attempt)
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
