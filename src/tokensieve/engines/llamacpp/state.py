"""Compressed context files: llama.cpp's own sequence state (``llama_state_seq_save_file``) plus a small JSON
beside it with what tokensieve needs to go on (each cell's position, the model file). The state file's size is
the memory a user sees: kept tokens x bytes per cell, plus llama.cpp's header and the token list."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

from tokensieve.engines.llamacpp.engine import CONTEXT, Engine, Sequence
from tokensieve.engines.llamacpp.ffi import lib
from tokensieve.errors import EmptyContextError, EngineError, ModelNotFoundError


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save(engine: Engine, path: str | Path) -> int:
    """Write sequence 0 to ``path`` (and ``path.json``); returns the state file's size in bytes."""
    path = Path(path)
    if not engine.seq.cells:
        raise EmptyContextError("nothing is prefilled: there is no sequence to save")
    cells = engine.seq.cells
    toks = (lib.llama_token * len(cells))(*[engine.seq.tokens[p] for p in cells])
    wrote = lib.llama_state_seq_save_file(engine.m.ctx, str(path).encode(), CONTEXT, toks, len(cells))
    if wrote == 0:
        raise EngineError(f"llama.cpp could not write the sequence state to {path}")
    meta = {"positions": cells, "model": str(engine.m.path), "arch": engine.m.arch}
    sidecar(path).write_text(json.dumps(meta))
    return path.stat().st_size


def load(engine: Engine, path: str | Path) -> int:
    """Replace sequence 0 with the saved one (cells 0..n-1 in the saved order); returns the token count."""
    path = Path(path)
    if not path.is_file() or not sidecar(path).is_file():
        raise ModelNotFoundError(f"no compressed context at {path} (with {sidecar(path).name} beside it)")
    meta = json.loads(sidecar(path).read_text())
    n = len(meta["positions"])
    toks = (lib.llama_token * max(n, 1))()
    count = ctypes.c_size_t(0)
    engine.clear()
    read = lib.llama_state_seq_load_file(engine.m.ctx, str(path).encode(), CONTEXT, toks, n, ctypes.byref(count))
    if read == 0 or count.value != n:
        raise EngineError(
            f"llama.cpp could not load {path.name} into this context (another model, or n_ctx below {n} tokens)"
        )
    engine.seq = Sequence(list(meta["positions"]), dict(zip(meta["positions"], toks[:n], strict=True)))
    return n


@dataclass
class Snapshot:
    """Sequence 0 held in memory (llama.cpp's state bytes and the cell list): one prefill, many evictions."""

    data: bytes
    seq: Sequence


def copy_state(engine: Engine, flags: int = 0) -> tuple[ctypes.Array, int]:
    """Sequence 0's state bytes (``flags``: llama.cpp's ``LLAMA_STATE_SEQ_FLAGS_*``) and how many were written."""
    size = lib.llama_state_seq_get_size_ext(engine.m.ctx, CONTEXT, flags)
    buf = (ctypes.c_uint8 * size)()
    wrote = lib.llama_state_seq_get_data_ext(engine.m.ctx, buf, size, CONTEXT, flags)
    if wrote == 0:
        raise EngineError("llama.cpp could not copy the sequence state")
    return buf, wrote


def snapshot(engine: Engine) -> Snapshot:
    buf, wrote = copy_state(engine)
    return Snapshot(bytes(buf[:wrote]), Sequence(list(engine.seq.cells), dict(engine.seq.tokens)))


def restore(engine: Engine, snap: Snapshot) -> None:
    engine.clear()
    buf = (ctypes.c_uint8 * len(snap.data)).from_buffer_copy(snap.data)
    if lib.llama_state_seq_set_data(engine.m.ctx, buf, len(snap.data), CONTEXT) == 0:
        raise EngineError("llama.cpp could not restore the sequence state (n_ctx too small?)")
    engine.seq = Sequence(list(snap.seq.cells), dict(snap.seq.tokens))


__all__ = ["Snapshot", "copy_state", "load", "restore", "save", "sidecar", "snapshot"]
