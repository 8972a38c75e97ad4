"""Read a document longer than the cache: chunk by chunk, scoring and evicting back to a budget after each.

The context needs ``n_ctx >= budget + chunk`` (plus, for kvzip, the repeat prompt and one reconstruction chunk on
the fork): what a small machine needs to read a long document, instead of compressing after a full prefill.
The baseline is llama.cpp's own context shift: :func:`read_shifted` keeps the ``sinks`` first tokens and the
most recent ones, dropping the oldest, as ``llama-cli``'s context shift does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokensieve.engines.llamacpp.compress import cell_scores
from tokensieve.engines.llamacpp.engine import Engine
from tokensieve.engines.llamacpp.evict import evict
from tokensieve.engines.llamacpp.scores import (
    AGGREGATES,
    DEFAULT,
    aggregate,
    get_method,
    keep_cells,
    pooled,
    window_pass,
)
from tokensieve.errors import BudgetError, EmptyContextError, check_choice


@dataclass
class ChunkedReport:
    method: str
    document_tokens: int
    kept_tokens: int
    chunks: int
    seconds: float
    peak_cells: int
    state_bytes: int


def _check(engine: Engine, ids: list[int], budget: int, chunk: int) -> None:
    if not ids:
        raise EmptyContextError("the document is empty: nothing to read")
    for name, v in (("budget", budget), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BudgetError(f"{name} {v!r} must be a positive whole number of tokens")
    if budget + chunk > engine.settings.n_ctx:
        raise BudgetError(
            f"budget {budget} + chunk {chunk} exceed n_ctx={engine.settings.n_ctx}: open the engine with "
            f"n_ctx >= {budget + chunk} (kvzip also needs room for its prompt and one reconstruction chunk)"
        )


def read_chunked(
    engine: Engine,
    ids: list[int],
    budget: int,
    chunk: int = 512,
    method: str = "kvzip",
    aggregate_by: str = DEFAULT,
    renumber: bool = False,
    skip_first: int = 0,
    **params: int,
) -> ChunkedReport:
    """Prefill ``ids`` into an empty sequence 0 ``chunk`` tokens at a time, evicting back to ``budget`` cells
    after every chunk that overflows it (question unseen)."""
    m = get_method(method, **params)
    check_choice("aggregate", aggregate_by, AGGREGATES)
    _check(engine, ids, budget, chunk)
    engine.clear()
    t0, peak, n_chunks = time.perf_counter(), 0, 0
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        over = len(engine.seq) + len(part) > budget
        layers = window_pass(engine, part, m.observe) if over and m.observe > 0 else None
        if layers is None:
            engine.prefill(part)
        n_chunks += 1
        peak = max(peak, len(engine.seq))
        if len(engine.seq) > budget:
            if layers is not None:
                scores = aggregate(pooled(layers, m.pool), aggregate_by, budget, skip_first)
            else:
                scores, _ = cell_scores(engine, m, budget, aggregate_by, None, skip_first)
            evict(engine, keep_cells(scores, budget, m.sinks, m.window), renumber=renumber)
    return ChunkedReport(
        m.id, len(ids), len(engine.seq), n_chunks, time.perf_counter() - t0, peak, engine.state_bytes()
    )


def read_shifted(engine: Engine, ids: list[int], budget: int, chunk: int = 512, sinks: int = 4) -> ChunkedReport:
    """llama.cpp's context shift: when a chunk does not fit, drop the oldest cells after the first ``sinks`` and
    shift the rest down (``seq_rm`` + ``seq_add``), as llama.cpp's examples do; nothing is scored."""
    _check(engine, ids, budget, chunk)
    engine.clear()
    t0, peak, n_chunks = time.perf_counter(), 0, 0
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        engine.prefill(part)
        n_chunks += 1
        peak = max(peak, len(engine.seq))
        if len(engine.seq) > budget:
            n = len(engine.seq)
            keep = list(range(min(sinks, budget))) + list(range(n - (budget - min(sinks, budget)), n))
            evict(engine, sorted(set(keep)), renumber=True)
    return ChunkedReport("context-shift", len(ids), len(engine.seq), n_chunks, time.perf_counter() - t0, peak,
                         engine.state_bytes())  # fmt: skip


__all__ = ["ChunkedReport", "read_chunked", "read_shifted"]
