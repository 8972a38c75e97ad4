"""Evict cells from llama.cpp's own cache: ``seq_rm`` of the dropped positions, a compact restore, and optionally
re-numbered positions (``seq_add``: llama.cpp re-rotates the keys, kvpress's "key re-rotation").

Two position modes:

- true positions (``renumber=False``): kept tokens keep their positions; the holes are outside llama.h's
  documented contract (``[pos_min, pos_max]`` present), so the tests check that decoding over them works;
- re-numbered (``renumber=True``): kept tokens are made contiguous from 0, so a document longer than the
  model's trained window can be read through a small cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokensieve.engines.llamacpp.engine import CONTEXT, FORK, Engine
from tokensieve.engines.llamacpp.ffi import lib
from tokensieve.engines.llamacpp.state import copy_state
from tokensieve.errors import EngineError, ParameterError


@dataclass
class Evicted:
    kept: int
    removed: int
    state_bytes: int  # sequence 0's state after the eviction (llama.cpp's count)


def runs(positions: list[int]) -> list[tuple[int, int]]:
    """Maximal ranges ``[p0, p1)`` of consecutive positions (ascending input)."""
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def compact(engine: Engine) -> None:
    """Save sequence 0, clear the cache, load it back: the kept cells land at 0..n-1 in the order they were saved
    (cell order), and the cell list stays the same list without its holes."""
    buf, wrote = copy_state(engine)
    lib.llama_memory_clear(engine.m.mem, True)
    if lib.llama_state_seq_set_data(engine.m.ctx, buf, wrote, CONTEXT) == 0:
        raise EngineError("llama.cpp could not restore the compressed sequence after an eviction")


def settle(engine: Engine) -> None:
    """Apply pending K-shifts now (llama.cpp applies them at the next decode): one token decoded on a fork."""
    if not engine.seq.cells:
        return
    pos = engine.fork()
    try:
        last = max(engine.seq.cells)
        engine.decode([engine.seq.tokens[last]], pos, FORK, logits=False)
    finally:
        engine.drop_fork()


def evict(engine: Engine, keep: list[int], renumber: bool = False) -> Evicted:
    """Keep the cells ``keep`` (indices into ``engine.seq.cells``) of sequence 0 and remove the rest."""
    cells = engine.seq.cells
    if not keep or any(not 0 <= i < len(cells) for i in keep):
        raise ParameterError(f"cells to keep must be indices into the {len(cells)} cells, at least one")
    kept = {cells[i] for i in keep}
    if max(cells) not in kept:  # llama.cpp continues a sequence at pos_max + 1 only
        raise ParameterError("the last position must be kept (llama.cpp continues a sequence after its last one)")
    dropped = sorted(set(cells) - kept)
    mem = engine.m.mem
    for p0, p1 in runs(dropped):
        if not lib.llama_memory_seq_rm(mem, CONTEXT, p0, p1):
            raise EngineError(
                f"llama.cpp refused to remove positions [{p0}, {p1}) (llama_memory_seq_rm returned false): this "
                f"model's memory ({engine.m.arch}) cannot drop part of a sequence (recurrent or hybrid)"
            )
    compact(engine)
    engine.seq.cells = [p for p in cells if p in kept]
    engine.seq.tokens = {p: engine.seq.tokens[p] for p in engine.seq.cells}
    if renumber:
        renumber_positions(engine)
    return Evicted(len(kept), len(dropped), engine.state_bytes())


def renumber_positions(engine: Engine) -> None:
    """Make sequence 0's positions 0..n-1 (in position order) with ``seq_add``; keys are re-rotated."""
    if not lib.llama_memory_can_shift(engine.m.mem):
        raise EngineError(f"llama.cpp cannot shift positions of this model's memory ({engine.m.arch})")
    order = sorted(engine.seq.cells)
    new = {p: i for i, p in enumerate(order)}
    for p0, p1 in runs(order):  # ascending: every run moves left into positions already vacated
        delta = new[p0] - p0
        if delta:
            lib.llama_memory_seq_add(engine.m.mem, CONTEXT, p0, p1, delta)
    engine.seq.tokens = {new[p]: t for p, t in engine.seq.tokens.items()}
    engine.seq.cells = [new[p] for p in engine.seq.cells]
    settle(engine)


__all__ = ["Evicted", "compact", "evict", "renumber_positions", "runs", "settle"]
