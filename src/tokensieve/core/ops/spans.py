"""Whole-unit selection: spend a per-head budget on whole units (words, digit runs), never splitting one.

Units come from the tokenizer: each token's decoded text says whether it starts a new unit, so no model type
is ever named. ``unit_ids`` numbers the units of each row; ``select_units`` keeps the best units that fit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokensieve.errors import ParameterError

UNITS = ("word", "alnum")


def _starts(prev: str, cur: str, unit: str) -> bool:
    if not prev or not cur or cur[0].isspace() or prev[-1].isspace():
        return True
    if unit == "alnum":  # runs of letters/digits; punctuation and each digit/letter switch start a unit
        return not (cur[0].isalnum() and prev[-1].isalnum()) or cur[0].isdigit() != prev[-1].isdigit()
    return False  # word: only whitespace separates (a uuid with hyphens, "7,423,911." stay whole)


def unit_ids(tokenizer, ids: Tensor, unit: str = "word", max_len: int = 32) -> Tensor:
    """[B, T] ascending unit numbers per row: a new unit where the token's text starts one (whitespace, a special
    token, with ``alnum`` also a letter/digit/punctuation switch), or after ``max_len`` tokens in one unit."""
    if unit not in UNITS:
        raise ParameterError(f"unit={unit!r}: choose one of {', '.join(UNITS)}")
    if tokenizer is None:
        raise ParameterError("a span rule needs the tokenizer to find word boundaries: pass it (or text, not ids)")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = torch.zeros(ids.shape, dtype=torch.long)
    for row in range(ids.shape[0]):
        toks = ids[row].tolist()
        pieces = tokenizer.batch_decode([[t] for t in toks])
        u, length, prev_special = 0, 0, True
        for j, (tok, piece) in enumerate(zip(toks, pieces, strict=True)):
            is_special = tok in special
            new = j > 0 and (is_special or prev_special or length >= max_len or _starts(pieces[j - 1], piece, unit))
            if new:
                u, length = u + 1, 0
            out[row, j] = u
            length += 1
            prev_special = is_special
    return out


def select_units(scores: Tensor, units: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """Per (row, head): units ranked by their best token's score (``-inf`` = never), taken greedily while they fit
    (a unit that does not fit is skipped, a shorter later one may still fit). Returns ``order [B, H, T]`` (kept
    tokens first, ascending, then the rest) and ``counts [B, H]`` (<= budget; no unit split, none over budget)."""
    b, h, t = scores.shape
    order = torch.empty(b, h, t, dtype=torch.long)
    counts = torch.zeros(b, h, dtype=torch.long)
    for row in range(b):
        u = units[row]
        n_units = int(u.max()) + 1
        size = torch.bincount(u, minlength=n_units)
        best = torch.full((h, n_units), float("-inf")).scatter_reduce(
            1, u.expand(h, t), scores[row].float().cpu(), "amax", include_self=True
        )
        for head in range(h):
            ranked = torch.argsort(best[head], descending=True, stable=True).tolist()
            take, left = [], budget
            for unit in ranked:
                if left == 0 or best[head, unit] == float("-inf"):
                    break
                if int(size[unit]) <= left:
                    take.append(unit)
                    left -= int(size[unit])
            kept = torch.zeros(n_units, dtype=torch.bool)
            kept[take] = True
            mask = kept[u]
            order[row, head] = torch.cat([mask.nonzero().flatten(), (~mask).nonzero().flatten()])
            counts[row, head] = int(mask.sum())
    return order.to(scores.device), counts.to(scores.device)
