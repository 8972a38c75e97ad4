"""Per-cell scores from llama.cpp's own attention, and one selection for every layer and head.

llama.cpp's cells are shared by all layers and heads, so one set of kept cells serves them all. Each method
reduces a layer's attention ``[n_head, n_queries, n_kv]`` over its queries at once (the block is then dropped)
to ``[n_head, n_cells]``; :mod:`aggregate` turns ``{layer: [n_head, n_cells]}`` into one score per cell (max,
mean, vote, norm, union, wvote: see there for each and for the default).

Methods (question unseen unless a question is given): ``kvzip`` (max attention over a reconstruction pass:
"repeat the context" teacher-forced on a fork, chunk by chunk), ``snapkv`` (the last ``window`` context
queries, or the question's, summed and max-pooled along the keys, kernel 7), ``tova`` (the last query),
``streaming`` (sinks + recent, no attention read), ``keydiff`` and ``lagkv`` (the KV family's own scores on
llama.cpp's cached keys, and for lagkv values, read from each layer's ``cache_k_l<layer> (view)`` /
``cache_v_l<layer> (view)``; models without sliding-window layers only, since no mask tells which cells a
sliding-window cache's keys are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import select
from tokensieve.core.scores.attention import pool_keys
from tokensieve.engines.llamacpp.aggregate import AGGREGATES, DEFAULT, aggregate
from tokensieve.engines.llamacpp.attention import expected_visible
from tokensieve.engines.llamacpp.engine import FORK, Engine
from tokensieve.errors import (
    EngagementError,
    ParameterError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)
from tokensieve.kv import get_method as kv_method

KVZIP_PROMPT = "Repeat the previous context exactly."


@dataclass
class Method:
    """What a llama.cpp scoring pass reads and which cells it always keeps."""

    id: str
    sinks: int = 0
    window: int = 0  # recent cells always kept (at least 1: llama.cpp needs the last position to continue)
    observe: int = 0  # snapkv/tova: how many of the last context queries are read
    pool: int = 1  # max-pool kernel along the keys
    chunk: int = 256  # kvzip: reconstruction tokens per fork


METHODS: dict[str, Method] = {
    "kvzip": Method("kvzip", chunk=256),
    "snapkv": Method("snapkv", window=32, observe=32, pool=7),
    "tova": Method("tova", observe=1),
    "streaming": Method("streaming", sinks=4),
    "keydiff": Method("keydiff", window=1),
    "lagkv": Method("lagkv", sinks=4, window=1),  # its last chunks (no full lag reference) score +inf: kept
}
KEY_METHODS = ("keydiff", "lagkv")
VALUE_METHODS = ("lagkv",)  # also reads the cached values
KEYS, VALUES, VIEW = "cache_k_l", "cache_v_l", " (view)"


def get_method(method: str | Method, **params: int) -> Method:
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise UnknownMethodError(f"method {method!r} has no llama.cpp scoring pass: use one of {', '.join(METHODS)}")
    base = METHODS[method]
    bad = set(params) - {"sinks", "window", "observe", "pool", "chunk"}
    if bad:
        raise ParameterError(f"unknown parameter(s) {', '.join(sorted(bad))} for {method} on llama.cpp")
    return Method(**{**base.__dict__, **{k: int(v) for k, v in params.items()}})


class Collector:
    """Per-layer ``[n_head, n_cells]`` scores, reduced from each layer's block as it arrives (max or sum over the
    queries at or after ``first``), with a mask check against the engine's cell list."""

    def __init__(self, cells: list[int], how: str, first: int = 0):
        self.cells, self.n, self.how, self.first = list(cells), len(cells), how, first
        self.layers: dict[int, np.ndarray] = {}

    def reduce(self, layer: int, probs: np.ndarray, queries: list[int]) -> None:
        rows = [i for i, q in enumerate(queries) if q >= self.first]
        if not rows:
            return
        block = probs[:, rows[0] : rows[-1] + 1, : self.n]  # rows are ascending and contiguous
        part = block.max(axis=1) if self.how == "max" else block.sum(axis=1)
        if part.shape[1] < self.n:  # an earlier ubatch's n_kv: later cells are not visible to its queries (prob 0)
            part = np.pad(part, ((0, 0), (0, self.n - part.shape[1])))
        old = self.layers.get(layer)
        if old is None:
            self.layers[layer] = part.astype(np.float32)
        elif self.how == "max":
            np.maximum(old, part, out=old)
        else:
            old += part

    def check(self, visible: np.ndarray, queries: list[int]) -> bool:
        want = expected_visible(self.cells, queries, self.n)
        k = min(self.n, visible.shape[1])  # llama.cpp's n_kv covers the cells used so far (padded)
        return bool(np.array_equal(visible[:, :k], want[:, :k])) and not want[:, k:].any()


def engaged(engine: Engine, col: Collector, what: str) -> dict[int, np.ndarray]:
    """The collected layers, or a loud error: nothing seen (flash attention on, a renamed tensor), or a mask that
    disagrees with the cell list on a model without sliding-window layers (a wrong cell -> position map)."""
    tap = engine.m.tap
    if tap.seen == 0:
        raise EngagementError(
            f"{what}: llama.cpp delivered no kq_soft_max tensor (flash attention on, or a renamed attention tensor "
            f"in this build): open the engine with flash_attn='off' and scoring=True"
        )
    if not col.layers or (engine.m.n_swa == 0 and tap.skipped):
        raise EngagementError(
            f"{what}: llama.cpp's attention mask disagrees with tokensieve's cell -> position list on layers "
            f"{sorted(tap.skipped)[:8]}: the KV cells no longer hold the positions tokensieve recorded"
        )
    return col.layers


def window_pass(engine: Engine, ids: list[int], observe: int) -> dict[int, np.ndarray]:
    """Prefill ``ids`` (appended to sequence 0) and sum the attention of the last ``observe`` context queries."""
    first = engine.seq.next_pos + len(ids) - observe
    before = engine.seq.cells + list(range(engine.seq.next_pos, engine.seq.next_pos + len(ids)))
    col = Collector(before, "sum", first)
    with engine.m.tap.reading(col.reduce, col.check):
        engine.prefill(ids)
    return engaged(engine, col, "snapkv/tova window")


def question_pass(engine: Engine, question_ids: list[int]) -> dict[int, np.ndarray]:
    """The attention the question's queries pay the context, on a fork (the question is not kept)."""
    col = Collector(engine.seq.cells, "sum")
    pos = engine.fork()
    try:
        with engine.m.tap.reading(col.reduce, col.check):
            engine.decode(question_ids, pos, FORK, logits=False)
    finally:
        engine.drop_fork()
    return engaged(engine, col, "question pass")


def reconstruction_pass(engine: Engine, chunk: int, prompt: str = KVZIP_PROMPT) -> dict[int, np.ndarray]:
    """KVzip: for each ``chunk`` of the context (in position order), fork sequence 0, teacher-force the repeat
    prompt and the chunk, and keep the max attention each reconstruction query pays each context cell."""
    prompt_ids = engine.prompt.question_ids(prompt)
    order = sorted(engine.seq.cells)
    col = Collector(engine.seq.cells, "max")
    with engine.m.tap.reading(col.reduce, col.check):
        for lo in range(0, len(order), chunk):
            part = [engine.seq.tokens[p] for p in order[lo : lo + chunk]]
            pos = engine.fork()
            col.first = pos + len(prompt_ids)  # the prompt's own queries are not reconstruction queries
            try:
                engine.decode(prompt_ids + part, pos, FORK, logits=False)
            finally:
                engine.drop_fork()
    return engaged(engine, col, "kvzip reconstruction")


def view_layer(prefix: str) -> Callable[[str], int | None]:
    """Matches llama.cpp's cache view ``<prefix><layer> (view)`` (not its permuted copies) to its layer."""

    def match(name: str) -> int | None:
        if not (name.startswith(prefix) and name.endswith(VIEW)):
            return None
        mid = name[len(prefix) : -len(VIEW)]
        return int(mid) if mid.isdigit() else None

    return match


key_layer = view_layer(KEYS)


def cached(engine: Engine, prefix: str, what: str) -> dict[int, np.ndarray]:
    """Every layer's cached keys (``KEYS``) or values (``VALUES``) of sequence 0's cells, ``[n_head_kv, n_cells,
    head_dim]`` in cell order, read during one token decoded on a fork. With flash attention off llama.cpp stores
    V transposed (its view is ``[head_dim, n_head_kv, n_kv]``); keys are ``[n_kv, n_head_kv, head_dim]``."""
    n = len(engine.seq.cells)
    out: dict[int, np.ndarray] = {}
    v_trans = prefix == VALUES and engine.settings.flash_attn == "off"

    def reduce(layer: int, x: np.ndarray, _queries: list[int]) -> None:
        out[layer] = x[:, :, :n].transpose(1, 2, 0) if v_trans else x[:n].transpose(1, 0, 2)

    pos = engine.fork()
    try:
        with engine.m.tap.reading(reduce, match=view_layer(prefix)):
            engine.decode([engine.seq.tokens[max(engine.seq.cells)]], pos, FORK, logits=False)
    finally:
        engine.drop_fork()
    if len(out) != engine.m.n_layer:
        kind = "values" if prefix == VALUES else "keys"
        raise EngagementError(
            f"{what}: llama.cpp showed the cached {kind} of {len(out)} of {engine.m.n_layer} layers (a renamed "
            "cache view, or a quantized cache): open the engine with type_k='f16' and type_v='f16'"
        )
    return out


def keys_pass(engine: Engine, method_id: str) -> dict[int, np.ndarray]:
    """A key-statistics score per layer ``[n_head_kv, n_cells]``: the KV family's method run on llama.cpp's cached
    keys (after RoPE, f16) and, for ``lagkv``, values, each read during one token decoded on a fork."""
    if engine.m.n_swa > 0:
        raise UnsupportedArchitectureError(
            f"{method_id} on llama.cpp reads cached keys by cell, and {engine.m.arch}'s sliding-window cache reuses "
            "cells on its own: use an attention method (kvzip, snapkv, tova) or streaming on this model"
        )
    score = kv_method(method_id)
    keys = cached(engine, KEYS, method_id)
    values = cached(engine, VALUES, method_id) if method_id in VALUE_METHODS else keys
    out: dict[int, np.ndarray] = {}
    for layer, k in keys.items():
        kt = torch.from_numpy(np.ascontiguousarray(k))[None]  # [1, Hkv, n, D]
        vt = torch.from_numpy(np.ascontiguousarray(values[layer]))[None]
        out[layer] = score.score(ScoreInputs(kt, vt, None, None))[0].float().numpy()
    return out


def keep_cells(scores: np.ndarray, budget: int, sinks: int, window: int) -> list[int]:
    """Cell indices to keep (ascending): protected first/last cells by position, then the top scores (the core's
    ``select``, ties towards the later cell). ``scores`` are in cell order = position order (see engine)."""
    s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None, None, :]
    idx = select(s, budget, None, sinks=min(sinks, budget), window=max(1, min(window, budget)))
    return idx[0, 0].tolist()


def pooled(layers: dict[int, np.ndarray], kernel: int) -> dict[int, np.ndarray]:
    if kernel <= 1:
        return layers
    return {i: pool_keys(torch.from_numpy(s)[None], kernel, "max")[0].numpy() for i, s in layers.items()}


__all__ = [
    "AGGREGATES",
    "DEFAULT",
    "METHODS",
    "Collector",
    "Method",
    "aggregate",
    "cached",
    "get_method",
    "keep_cells",
    "key_layer",
    "keys_pass",
    "pooled",
    "question_pass",
    "reconstruction_pass",
    "window_pass",
]
