"""Read a context into llama.cpp, score it with llama.cpp's own attention, evict to a budget: :func:`compress`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from tokensieve.engines.llamacpp.engine import Engine
from tokensieve.engines.llamacpp.evict import evict, renumber_positions
from tokensieve.engines.llamacpp.hybrid import POLICIES, SHARED, cut_window, split
from tokensieve.engines.llamacpp.scores import (
    AGGREGATES,
    DEFAULT,
    KEY_METHODS,
    aggregate,
    get_method,
    keep_cells,
    keys_pass,
    pooled,
    question_pass,
    reconstruction_pass,
    window_pass,
)
from tokensieve.errors import BudgetError, EmptyContextError, ParameterError, check_choice, check_keep


@dataclass
class Report:
    method: str
    context_tokens: int
    kept_tokens: int
    prefill_seconds: float
    score_seconds: float
    state_bytes_full: int
    state_bytes: int
    layers_read: int  # layers whose attention the score used (sliding-window layers may be skipped)
    window_cells: int | None = None  # hybrid models: positions the sliding-window cache kept (None: not cut)


def cell_scores(
    engine: Engine, method, budget: int, how: str, question_ids: list[int] | None, skip_first: int = 0
) -> tuple[np.ndarray, int]:
    """One score per cell of sequence 0 (after its prefill) for a method that reads after the prefill, and the
    number of layers whose attention it used (sliding-window layers whose cells differ are skipped)."""
    if method.id == "streaming":
        return np.asarray(engine.seq.cells, dtype=np.float32), 0  # recency; the sinks are protected
    if method.id == "kvzip":
        layers = reconstruction_pass(engine, method.chunk)
    elif method.id in KEY_METHODS:
        layers = keys_pass(engine, method.id)
    else:
        layers = question_pass(engine, question_ids or [])
    return aggregate(pooled(layers, method.pool), how, budget, skip_first), len(layers)


def budget_for(n: int, keep: float | None, budget: int | None) -> int:
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise BudgetError(f"budget {budget!r} must be a positive whole number of tokens")
        return min(budget, n)
    return max(1, math.ceil(check_keep(keep if keep is not None else 1.0) * n))


def compress(
    engine: Engine,
    context: str | list[int],
    method: str = "kvzip",
    keep: float | None = None,
    budget: int | None = None,
    question: str | None = None,
    aggregate_by: str = DEFAULT,
    renumber: bool = False,
    skip_first: int = 0,
    hybrid: str | None = None,
    **params: int,
) -> Report:
    """Prefill ``context`` into sequence 0 (which must be empty) and keep ``keep`` of it (or ``budget`` tokens).

    ``question`` makes snapkv/tova query-aware (its queries are read on a fork and not kept); without it every
    method is question-unseen. ``aggregate_by`` / ``skip_first``: how layers x heads become one score per cell
    (:mod:`tokensieve.engines.llamacpp.aggregate`). With nothing removed (keep 1.0) the cache is exactly plain
    llama.cpp's.

    On a model with sliding-window layers (Gemma-3), ``keep`` is the share of the sequence state's bytes, split by
    ``hybrid`` (default ``full-first``: the window shrinks first, as on the HF path; ``even``, ``full-only``; or
    ``shared``: one selection cut from both caches, ``keep`` then a share of positions). ``budget`` (cells) is
    always shared. Elsewhere ``hybrid`` must be left out."""
    m = get_method(method, **params)
    check_choice("aggregate", aggregate_by, AGGREGATES)
    if keep is not None:
        check_keep(keep)
    ids = engine.prompt.context_ids(context) if isinstance(context, str) else list(context)
    if not ids:
        raise EmptyContextError("the context is empty: nothing to compress")
    if engine.seq.cells:
        engine.clear()
    n = len(ids)
    if hybrid is not None:
        check_choice("hybrid", hybrid, POLICIES)
    if hybrid is not None and engine.m.n_swa <= 0:
        raise ParameterError(f"hybrid={hybrid!r}: {engine.m.arch} has no sliding-window layers (leave it out)")
    policy = (hybrid or "full-first") if engine.m.n_swa > 0 and budget is None and keep is not None else SHARED
    b = budget_for(n, keep, budget)
    window = b < n and m.observe > 0 and question is None  # read the last queries while prefilling
    t0 = time.perf_counter()
    layers = window_pass(engine, ids, m.observe) if window else None
    if layers is None:
        engine.prefill(ids)
    t1 = time.perf_counter()
    full = engine.state_bytes()
    used, window_cells = 0, None
    if policy != SHARED:
        b, window_cells = split(engine, float(keep), policy)
    if b < n:
        if layers is not None:
            scores = aggregate(pooled(layers, m.pool), aggregate_by, b, skip_first)
            used = len(layers)
        else:
            q = engine.prompt.question_ids(question) if question else None
            scores, used = cell_scores(engine, m, b, aggregate_by, q, skip_first)
        evict(engine, keep_cells(scores, b, m.sinks, m.window))
    if window_cells is not None:
        cut_window(engine, min(window_cells, len(engine.seq)))
    if renumber and b < n:
        renumber_positions(engine)
    t2 = time.perf_counter()
    return Report(m.id, n, len(engine.seq), t1 - t0, t2 - t1, full, engine.state_bytes(), used, window_cells)


__all__ = ["Report", "budget_for", "cell_scores", "compress"]
