"""Hybrid-attention models in llama.cpp (Gemma-3: sliding-window and full-attention layers): ``keep`` as the share of
the sequence state's bytes, split between the two caches with the KV family's own policies (:class:`Hybrid`).

llama.cpp holds such a model in two caches: the full layers' (every kept position) and the sliding layers' (only
positions inside the window). ``llama_memory_seq_rm`` cuts both alike, so one shared selection spends the budget on
window cells that cost five times a full-layer cell on Gemma-3 270M (15 sliding layers to 3 full ones) while the
full layers, which hold long-range retrieval, lose positions. The sliding cache alone can be cut through
llama.cpp's partial state (``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``): read it after removing the extra window
positions, restore the whole sequence, then put the smaller window back (:func:`cut_window`). The window is kept a
subset of the full cache's positions, as llama.cpp assumes (its ``seq_pos_min`` reads the sliding cache).

Layer counts are measured, not looked up by architecture: after a contiguous prefill the partial state holds the
window's cells and the rest of the state the full layers' cells, so bytes per cell give the ratio of sliding to
full layers (both have one head shape on every hybrid GGUF we ship; the bytes held are measured afterwards anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokensieve.engines.llamacpp.engine import CONTEXT, Engine
from tokensieve.engines.llamacpp.ffi import lib
from tokensieve.engines.llamacpp.state import copy_state
from tokensieve.errors import EngineError, ParameterError, check_choice
from tokensieve.kv import Hybrid

PARTIAL_ONLY = 1  # llama.h: LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY (the sliding-window cache alone)
SHARED = "shared"  # one selection for both caches (llama_memory_seq_rm alone): keep = share of positions
POLICIES = ("full-first", "even", "full-only", SHARED)


@dataclass(frozen=True)
class Layout:
    """What sequence 0 holds right after a contiguous prefill: cells in the full-layer cache and in the window,
    and how many layers of each kind (measured from the state's bytes)."""

    tokens: int
    window_cells: int
    full_layers: int
    sliding_layers: int


def state_size(engine: Engine, flags: int = 0) -> int:
    return int(lib.llama_state_seq_get_size_ext(engine.m.ctx, CONTEXT, flags))


def layout(engine: Engine) -> Layout:
    """Measure the two caches of a sequence just prefilled (contiguous positions 0..n-1)."""
    n = len(engine.seq.cells)
    if engine.m.n_swa <= 0 or n == 0:
        raise ParameterError(f"{engine.m.arch} has no sliding-window layers: a hybrid split does not apply")
    hi = max(engine.seq.cells)
    # the cells a sliding layer still sees (and llama.cpp's state holds): older ones stay until their slot is reused
    window = sum(p > hi - engine.m.n_swa for p in engine.seq.cells)
    whole, part = state_size(engine), state_size(engine, PARTIAL_ONLY)
    per_full, per_window = (whole - part) / n, part / max(window, 1)
    layers = engine.m.n_layer
    full = min(layers - 1, max(1, round(layers * per_full / (per_full + per_window))))
    return Layout(n, window, full, layers - full)


def split(engine: Engine, keep: float, policy: str) -> tuple[int, int]:
    """``(positions kept in the full layers, positions kept in the window)`` holding ``keep`` of the state's bytes
    under ``policy`` (the KV family's :class:`Hybrid` rule, the same as the HF path's ``hybrid=``)."""
    check_choice("hybrid", policy, POLICIES)
    lay = layout(engine)
    full, window = Hybrid(policy).split(keep, lay.tokens, lay.full_layers, lay.sliding_layers, lay.window_cells)
    return full, window


def cut_window(engine: Engine, cells: int) -> None:
    """Keep only the ``cells`` most recent positions of sequence 0 in the sliding-window cache; the full layers
    keep every position they hold."""
    if engine.m.n_swa <= 0:
        raise ParameterError(f"{engine.m.arch} has no sliding-window layers: no window to cut")
    order = sorted(engine.seq.cells)
    if not 1 <= cells <= len(order):
        raise ParameterError(f"window cells must be between 1 and the {len(order)} kept positions, got {cells}")
    first = order[-cells]
    if sum(p > order[-1] - engine.m.n_swa for p in order) <= cells:
        return  # the window already holds no more than that: nothing removed, the cache stays plain llama.cpp's
    ctx, mem = engine.m.ctx, engine.m.mem
    whole, n_whole = copy_state(engine, 0)
    if not lib.llama_memory_seq_rm(mem, CONTEXT, 0, first):
        raise EngineError(f"llama.cpp refused to remove positions [0, {first}) ({engine.m.arch})")
    window, n_window = copy_state(engine, PARTIAL_ONLY)
    lib.llama_memory_seq_rm(mem, CONTEXT, -1, -1)
    if lib.llama_state_seq_set_data(ctx, whole, n_whole, CONTEXT) == 0:
        raise EngineError("llama.cpp could not restore the sequence after cutting its window")
    if lib.llama_state_seq_set_data_ext(ctx, window, n_window, CONTEXT, PARTIAL_ONLY) == 0:
        raise EngineError("llama.cpp could not restore the cut sliding-window cache")
    if engine.pos_range()[0] != first:
        raise EngineError(f"the sliding-window cache starts at {engine.pos_range()[0]}, not {first}, after the cut")


__all__ = ["PARTIAL_ONLY", "POLICIES", "SHARED", "Layout", "cut_window", "layout", "split"]
