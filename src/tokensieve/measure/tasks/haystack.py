"""Haystacks measured in model tokens, with needles inserted at chosen depths.

A haystack is a sequence of sentences (repeated filler, or natural prose from ``corpus``). Needles go
between sentences at the boundary closest to their depth; the whole context (chat template included)
is then trimmed, one sentence at a time, until it fits the requested number of tokens. Depths are
measured on the final token sequence, so they are exact, not estimated from characters.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

from tokensieve.runtime.corpus import prose_paragraphs
from tokensieve.runtime.prompts import PromptFormat

T = TypeVar("T")

# the repeated filler of the pass-key benchmark (Landmark Attention) that RULER also uses as "noise"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HAYSTACKS = ("filler", "prose")
MAX_WORDS = 30

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(*])")


def sentences(haystack: str, rng: random.Random, sources: Sequence[str] | None = None) -> Iterator[str]:
    """An endless stream of sentences. Prose starts at a random paragraph of the corpus and runs on in
    order (wrapping around), so different samples read different text; paragraph ends carry a blank line.
    Needles go between these pieces, so a needle may sit inside an overlong sentence, as in RULER."""
    if haystack == "filler":
        parts = _SENTENCE.split(FILLER)
        while True:
            yield from parts
    if haystack != "prose":
        raise ValueError(f"haystack {haystack!r} must be one of {', '.join(HAYSTACKS)}")
    paras = prose_paragraphs(tuple(sources)) if sources else prose_paragraphs()
    i = rng.randrange(len(paras))
    while True:
        parts = [piece for s in _SENTENCE.split(paras[i % len(paras)]) for piece in _pieces(s)]
        yield from (*parts[:-1], parts[-1] + "\n")
        i += 1


def _pieces(sentence: str, words: int = MAX_WORDS) -> list[str]:
    """A long sentence (reference prose has some) as pieces of at most ``words`` words, so that fitting a
    context to its length never leaves more than a short piece of slack."""
    w = sentence.split(" ")
    return [" ".join(w[i : i + words]) for i in range(0, len(w), words)]


@dataclass
class Built:
    context: str
    n_tokens: int  # of the context part, chat template included
    depths: list[float]  # the measured depth of each needle (its first token / n_tokens)


def _join(pieces: Sequence[str]) -> str:
    out = []
    for p in pieces:
        if out and not out[-1].endswith("\n"):
            out.append(" ")
        elif out:
            out.append("\n")  # a paragraph end ("...\n") becomes a blank line
        out.append(p)
    return "".join(out).rstrip()


def build(
    tokenizer: PreTrainedTokenizerBase,
    n_tokens: int,
    stream: Iterator[str],
    needles: Sequence[tuple[float, str]] = (),
    header: str = "",
    footer: str = "",
) -> Built:
    """``header`` + haystack with ``needles`` [(depth, text)] + ``footer``, at most ``n_tokens`` tokens of
    context (the chat template's context part included) and within one sentence of it."""
    fmt = PromptFormat(tokenizer)
    fixed = len(fmt.context_ids(_join([s for s in (header, footer) if s] + [t for _, t in needles])))
    budget = n_tokens - fixed
    if budget <= 0:
        raise ValueError(f"{n_tokens} tokens cannot hold the needles and the instructions ({fixed} tokens)")
    head = len(fmt.context_ids(header + " ")) if header else len(fmt.context_ids(" "))
    hay: list[str] = []
    lengths: list[int] = []
    while sum(lengths) < budget * 1.05 + 16:  # measured one by one: close to the joint count, fitted below
        hay.append(next(stream))
        lengths.append(len(tokenizer.encode(" " + hay[-1], add_special_tokens=False)))

    def assemble(m: int) -> tuple[list[str], list[int]]:
        """Header, the first ``m`` sentences with the needles at the boundaries closest to their depths
        (depth measured over the whole context, header included), footer; and each needle's piece index."""
        cum = [head]
        for n in lengths[:m]:
            cum.append(cum[-1] + n)
        total = cum[-1] + sum(len(tokenizer.encode(" " + t, add_special_tokens=False)) for _, t in needles)
        slots = [min(range(m + 1), key=lambda i: abs(cum[i] - depth * total)) for depth, _ in needles]
        pieces: list[str] = [header] if header else []
        where = [0] * len(needles)
        order = sorted(range(len(needles)), key=lambda j: (slots[j], j))
        k = 0
        for i in range(m + 1):
            while k < len(order) and slots[order[k]] == i:
                where[order[k]] = len(pieces)
                pieces.append(needles[order[k]][1])
                k += 1
            if i < m:
                pieces.append(hay[i])
        return pieces + ([footer] if footer else []), where

    def attempt(m: int) -> tuple[list[str], list[int], int] | None:
        pieces, where = assemble(m)
        n = len(fmt.context_ids(_join(pieces)))
        return (pieces, where, n) if n <= n_tokens else None

    best = largest_that_fits(len(hay), attempt)  # the most sentences that fit
    if best is None:
        raise ValueError(f"{n_tokens} tokens cannot hold one sentence of haystack besides the needles")
    pieces, where, n = best
    depths = [len(fmt.context_ids(_join(pieces[:w]) + " ")) / n if w else 0.0 for w in where]
    return Built(_join(pieces), n, depths)


def largest_that_fits(hi: int, attempt: Callable[[int], T | None]) -> T | None:
    """Binary search over 1..hi: ``attempt(m)`` of the largest m whose attempt is not None (None once too big)."""
    lo, best = 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        got = attempt(mid)
        if got is not None:
            best, lo = got, mid + 1
        else:
            hi = mid - 1
    return best
