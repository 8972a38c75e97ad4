"""Words and spans from the tokenizer's character offsets, so that a seven-digit number split into
seven tokens is still one unit, and a unit's score is the sum of its tokens' scores."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+(?:[-'.:]\w+)*|[^\w\s]+")  # 71432, pass-key, 3.14, a UUID; punctuation runs apart


@dataclass
class Unit:
    start: int  # first context token
    end: int  # one past the last
    text: str
    char_start: int
    line: int  # 1-based line of the context the unit sits on
    char_end: int = 0
    score: float = 0.0
    share: float = 0.0  # of the positive attribution mass


def _owner(words: list[tuple[int, int]], starts: list[int], a: int, b: int) -> int:
    """The first word that characters ``[a, b)`` touch, or -1."""
    j = bisect.bisect_right(starts, a) - 1
    if j >= 0 and words[j][1] > a:
        return j
    if j + 1 < len(words) and words[j + 1][0] < b:
        return j + 1
    return -1


def word_units(text: str, offsets: list[tuple[int, int]]) -> list[Unit]:
    """One unit per word (``_WORD``) of ``text``; a token belongs to the first word its characters touch,
    and tokens touching none (whitespace) join the next unit (the last one at the end)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [w[0] for w in words]
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    units: list[Unit] = []
    owners: list[int] = []
    pending: int | None = None  # first token of a whitespace run waiting for its word
    for t, (a, b) in enumerate(offsets):
        w = _owner(words, starts, a, b)
        if w == -1:
            pending = t if pending is None else pending
            continue
        if units and w == owners[-1]:
            units[-1].end = t + 1
        else:
            ca, cb = words[w]
            first = t if pending is None else pending
            units.append(Unit(first, t + 1, text[ca:cb], ca, bisect.bisect_right(line_starts, ca), cb))
            owners.append(w)
        pending = None
    if pending is not None:
        if units:
            units[-1].end = len(offsets)
        else:
            a = offsets[pending][0]
            units.append(Unit(pending, len(offsets), text[a : offsets[-1][1]], a, 1, offsets[-1][1]))
    return units


def score_units(units: list[Unit], scores: list[float]) -> list[Unit]:
    total = sum(max(0.0, s) for s in scores) or 1.0
    for u in units:
        u.score = float(sum(scores[u.start : u.end]))
        u.share = max(0.0, u.score) / total
    return units


def spans(text: str, units: list[Unit], n: int = 3) -> list[Unit]:
    """The ``n`` best spans: the top ``2n`` words by share, with neighbours on one line merged into one span
    ('pass key') whose share is the sum of its words' shares."""
    top = sorted(range(len(units)), key=lambda i: -units[i].share)[: 2 * n]
    top = sorted(i for i in top if units[i].share > 0)
    out: list[Unit] = []
    prev = -2
    for i in top:
        u = units[i]
        if out and i == prev + 1 and u.line == out[-1].line:
            s = out[-1]
            out[-1] = Unit(
                s.start,
                u.end,
                text[s.char_start : u.char_end],
                s.char_start,
                s.line,
                u.char_end,
                s.score + u.score,
                s.share + u.share,
            )
        else:
            out.append(Unit(u.start, u.end, u.text, u.char_start, u.line, u.char_end, u.score, u.share))
        prev = i
    return sorted(out, key=lambda u: -u.share)[:n]
