"""Read llama.cpp's own attention during a decode through ``cb_eval``, one layer at a time.

With flash attention off, every layer's attention probabilities are the graph tensor ``kq_soft_max-<layer>``:
ggml shape ne = [n_kv cells (padded), n_tokens, n_head], read here as ``[n_head, n_tokens, n_kv]``. Each one is
handed to a reducer at once and dropped, so no more than one layer's block (which llama.cpp computed itself) is
held at a time.

Columns are KV *cells*, not positions. Every layer's mask (the softmax's second source, filled by llama.cpp
from its own cell metadata) is compared with the mask that tokensieve's cell -> position list predicts; a layer
whose mask disagrees is not read. A model without sliding-window layers must agree on every layer (otherwise
the list is wrong and the pass raises); a sliding-window layer, whose cache reuses cells on its own, is skipped
when its cells do not line up with the full layers'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tokensieve.engines.llamacpp.ffi import eval_callback, read_strided, read_tensor, tensor_name, tensor_source

ATTENTION = "kq_soft_max-"

# (layer, probs [n_head, n_tokens, n_kv], the positions of the n_tokens queries)
Reducer = Callable[[int, np.ndarray, list[int]], None]
# (visible [n_tokens, n_kv] bool, query positions) -> does llama.cpp's mask match the cell list?
MaskCheck = Callable[[np.ndarray, list[int]], bool]


def layer_of(name: str, prefix: str) -> int | None:
    """The layer index of ``<prefix><layer>`` tensor names (``kq_soft_max-7``), else None."""
    if not name.startswith(prefix):
        return None
    tail = name[len(prefix) :]
    return int(tail) if tail.isdigit() else None


def expected_visible(cells: list[int], query_positions: list[int], n_kv: int) -> np.ndarray:
    """[n_queries, n_kv] bool: cell ``c`` of the context is visible to a query at position ``q`` iff its position
    ``cells[c] <= q`` (causal); columns past the context are not predicted (the caller compares ``[:, :len]``)."""
    pos = np.asarray(cells, dtype=np.int64)
    q = np.asarray(query_positions, dtype=np.int64)[:, None]
    out = np.zeros((len(query_positions), n_kv), dtype=bool)
    out[:, : len(cells)] = pos[None, :] <= q
    return out


@dataclass
class Tap:
    """The ``cb_eval`` of one llama.cpp context. Idle (it asks for nothing, so the graph runs unsplit) until a
    reader is set with :meth:`reading`."""

    reducer: Reducer | None = None
    check: MaskCheck | None = None
    seen: int = 0
    read: set[int] = field(default_factory=set)  # layers handed to the reducer
    skipped: set[int] = field(default_factory=set)  # layers whose mask disagreed with the cell list
    error: BaseException | None = None  # raised by the engine after the decode (a callback cannot raise)
    match: Callable[[str], int | None] | None = None  # another tensor to read (keys) instead of the attention
    queries: list[int] = field(default_factory=list)  # positions of the ubatch being decoded (set by the engine)
    _masks: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c_callback = eval_callback(self._call)

    def _call(self, t: int, ask: bool, _user: int) -> bool:
        if self.reducer is None:
            return not ask  # asked: nothing wanted
        name = tensor_name(t)
        layer = self.match(name) if self.match is not None else layer_of(name, ATTENTION)
        if ask:
            return layer is not None
        if layer is None:
            return True
        try:
            if self.match is not None:  # not attention (a cache view, maybe strided): no mask to check
                self.reducer(layer, read_strided(t)[0], self.queries)
                self.seen += 1
                self.read.add(layer)
                return True
            probs = read_tensor(t)[0]  # ne3 is 1: one stream (kv_unified)
            self.seen += 1
            if self._mask_ok(tensor_source(t, 1), probs.shape[1]):
                self.reducer(layer, probs, self.queries)
                self.read.add(layer)
            else:
                self.skipped.add(layer)
        except Exception as e:  # handed to the engine, which raises it after the decode
            self.error = e
            return False  # stops the graph; the decode fails loudly
        return True

    def _mask_ok(self, mask: int, n_tokens: int) -> bool:
        if self.check is None:
            return True
        if mask not in self._masks:  # layers share a mask: read each one once per decode
            m = read_tensor(mask)[0, 0, :n_tokens]  # [n_tokens, n_kv], 0 where visible, -inf where masked
            self._masks[mask] = self.check(m > -1e30, self.queries)
        return self._masks[mask]

    def new_decode(self, queries: list[int]) -> None:
        """Before each ``llama_decode`` of exactly one ubatch: its query positions; masks are read afresh."""
        self._masks, self.queries = {}, queries

    @property
    def active(self) -> bool:
        return self.reducer is not None

    def reading(
        self, reducer: Reducer, check: MaskCheck | None = None, match: Callable[[str], int | None] | None = None
    ) -> Tap:
        self.reducer, self.check, self.match = reducer, check, match
        self.seen, self.read, self.skipped, self._masks = 0, set(), set(), {}
        return self

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reducer = self.check = self.match = None


__all__ = ["ATTENTION", "MaskCheck", "Reducer", "Tap", "expected_visible", "layer_of"]
