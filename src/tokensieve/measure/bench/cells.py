"""Evaluating compressed caches: answers for retrieval, teacher-forced passes for fidelity.

Cells that hold the same number of tokens in every layer (every method at one keep ratio, one
allocator) are stacked along the batch dimension and evaluated in one ``generate`` / one forward: a
decode step of a 135M model on CPU is bound by reading the weights, so 8 rows cost about 2-3 rows.
Each row still attends only to its own kept tokens (at their true positions), so a stacked cell equals
the same cell evaluated alone, up to float rounding (tested).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.kv import Compressed, CompressibleCache, Prefill, RaggedLayer, SieveLayer, Stats, WindowLayer
from tokensieve.measure.bench import metrics
from tokensieve.measure.tasks.base import Question
from tokensieve.runtime.prompts import PromptFormat, clean_answer


def _signature(c: Compressed) -> tuple | None:
    """What must match for two cells to share a batch; None if this cache cannot be stacked."""
    sig = []
    for layer in c.cache.layers:
        if isinstance(layer, RaggedLayer):  # per-head counts may differ: rows stack as more segments
            if layer.flat_valid is not None:
                return None
            sig.append(("ragged", layer.cumulative_length, layer.n_kv_heads))
        elif isinstance(layer, SieveLayer):
            # other layouts (quantized, sparse) override attend: evaluate them alone
            stackable = type(layer) in (SieveLayer, WindowLayer)  # a cut window is a dense layer too
            if not stackable or layer.valid is not None or not layer.is_initialized:
                return None
            sig.append(tuple(layer.keys.shape))
        else:
            sig.append(("other", type(layer).__name__))
    return (c.context_ids.shape[0], *sig)


def groups(cells: Sequence[Compressed], max_batch: int) -> list[list[int]]:
    """Indices of cells grouped for stacking (same signature, at most ``max_batch`` per group)."""
    by_sig: dict[tuple, list[int]] = {}
    alone: list[list[int]] = []
    for i, c in enumerate(cells):
        sig = _signature(c) if max_batch > 1 else None
        if sig is None or c.context_ids.shape[0] != 1:
            alone.append([i])
        else:
            by_sig.setdefault(sig, []).append(i)
    out = []
    for idx in by_sig.values():
        out.extend(idx[j : j + max_batch] for j in range(0, len(idx), max_batch))
    return out + alone


def stack(cells: Sequence[Compressed]) -> Compressed:
    """One batched ``Compressed`` whose row r is ``cells[r]`` (same context, same per-layer sizes; ragged layers
    need only the same context)."""
    if len(cells) == 1:
        return cells[0]
    first = cells[0]
    cache: CompressibleCache = first.cache.fork()
    n = len(cells)
    for i, layer in enumerate(first.cache.layers):
        if isinstance(layer, RaggedLayer):
            compat.set_cache_layer(cache, i, RaggedLayer.stack([c.cache.layers[i] for c in cells]))
        elif isinstance(layer, SieveLayer):
            new = layer.fork()
            layers = [c.cache.layers[i] for c in cells]
            new.keys = torch.cat([x.keys for x in layers])
            new.values = torch.cat([x.values for x in layers])
            index = []
            for x in layers:
                ti = x.token_index
                if ti is None:  # nothing evicted in this layer
                    ti = torch.arange(x.n_held, device=x.keys.device).expand(*x.keys.shape[:2], -1)
                index.append(ti)
            new.token_index = torch.cat(index)
            compat.set_cache_layer(cache, i, new)
        else:  # not compressed (sliding window): the same tensors in every cell, repeated per row
            other = copy.copy(layer)
            other.batch_repeat_interleave(n)
            compat.set_cache_layer(cache, i, other)
    stats = copy.copy(first.stats)
    return Compressed(
        first.model, first.tokenizer, cache, first.context_ids.expand(n, -1), None, stats, "stacked", first.keep
    )


@dataclass
class Timed:
    value: object
    seconds: float


def answer_rows(c: Compressed, question: Question, rows: int) -> Timed:
    """Greedy answers of every row of a (stacked) compressed context to one question."""
    fmt = PromptFormat(c.tokenizer)
    ids = torch.tensor([fmt.question_ids(question.text, question.answer_prefix)]).expand(rows, -1)
    start = time.perf_counter()
    new = c.generate(ids, max_new_tokens=question.max_new_tokens)
    seconds = time.perf_counter() - start
    texts = [clean_answer(c.tokenizer.decode(r, skip_special_tokens=True)) for r in new]
    return Timed(texts, seconds)


def answer_last_token(c: Compressed, last: int, question: Question, rows: int) -> Timed:
    """Query-aware cells: the prompt up to its last token was compressed; generation starts from it."""
    ids = torch.tensor([[last]]).expand(rows, -1)
    start = time.perf_counter()
    new = c.generate(ids, max_new_tokens=question.max_new_tokens)
    seconds = time.perf_counter() - start
    texts = [clean_answer(c.tokenizer.decode(r, skip_special_tokens=True)) for r in new]
    return Timed(texts, seconds)


def sparse_cell(pre: Prefill, method, read: float) -> Compressed:
    """A sparse-decoding cell: the shared prefill's whole cache, read ``read`` of it per decode step. Its
    layers pool the meters of every fork, so ``read_stats`` sees what the evaluation read."""
    from tokensieve.kv import SparseCache

    start = time.perf_counter()
    cache = SparseCache(pre.model, method, read=read, tokenizer=pre.tokenizer).adopt(pre.cache)
    for layer in cache.sparse_layers:
        layer.pool_meter = True
    stats = Stats.measure(cache, pre.context_tokens, pre.cache.kv_bytes(), pre.seconds, time.perf_counter() - start)
    return Compressed(pre.model, pre.tokenizer, cache, pre.context_ids, pre.context_mask, stats, method.id, read)


def read_stats(c: Compressed) -> dict[str, float] | None:
    """Measured over the decode steps, mean over layers: the fraction of the cache's bytes read (scoring +
    attended keys and values; a layer that reads everything, such as TidalDecode's selection layers, counts
    1) and the fraction of slots attended; None for other caches. Multi-token forwards (the question) are
    dense and not metered."""
    layers = getattr(c.cache, "sparse_layers", None)
    if not layers:
        return None
    metered = [layer.meter for layer in layers if layer.meter.steps]
    if not metered:
        return {"sparse_steps": 0}
    return {
        "read_fraction": sum(float(m.read) / m.steps for m in metered) / len(metered),
        "attended_fraction": sum(float(m.attended) / m.steps for m in metered) / len(metered),
        "sparse_steps": max(m.steps for m in metered),
    }


def forward_logits(c: Compressed, ids: Tensor) -> Tensor:
    """Teacher-forced logits [rows, L, V] of ``ids [L]`` appended to every row of a fork of the cache.
    Sparse-decoding caches take the tokens one per forward, as decoding does (a multi-token forward is a
    prefill and reads everything)."""
    rows = c.context_ids.shape[0]
    cache = c.cache.fork()
    with torch.inference_mode():
        if getattr(cache, "sparse_layers", None):
            steps = [
                c.model(input_ids=t.view(1, 1).expand(rows, 1), **compat.with_cache(c.model, cache)).logits for t in ids
            ]
            return torch.cat(steps, 1).float()
        out = c.model(input_ids=ids.view(1, -1).expand(rows, -1), **compat.with_cache(c.model, cache))
    return out.logits.float()


def greedy_continuation(c: Compressed, first: int, n: int) -> list[int]:
    """``n`` greedy tokens from a (single-row) cache, the first one given (it comes from the prefill logits).
    Step by step, as decoding runs; the cache itself is not changed (a fork takes the new tokens)."""
    cache = c.cache.fork()
    out = [first]
    with torch.inference_mode():
        for _ in range(n - 1):
            logits = c.model(input_ids=torch.tensor([[out[-1]]]), **compat.with_cache(c.model, cache)).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


@dataclass
class FidelityRef:
    """What every fidelity cell of one sample is compared with (from the full cache)."""

    inputs: Tensor  # true continuation without its last token
    targets: Tensor  # true continuation without its first token
    logprobs: Tensor  # the full cache's log-probs along the true continuation [L, V]
    greedy: Tensor  # the full cache's greedy continuation [G]
    long: Tensor | None = None  # positions that need the long context (``metrics.long_positions``)

    @classmethod
    def build(
        cls,
        full: Compressed,
        continuation: Sequence[int],
        first: int,
        greedy: int,
        short_context: Sequence[int] | None = None,
    ) -> FidelityRef:
        """``short_context``: the context's last tokens alone, to find the long-range positions."""
        cont = torch.tensor(list(continuation))
        logits = forward_logits(full, cont[:-1])[0]
        g = torch.tensor(greedy_continuation(full, first, greedy))
        ref = metrics.reference(logits)
        long = None
        if short_context is not None:
            ids = torch.tensor([[*short_context, *cont[:-1].tolist()]])
            with torch.inference_mode():
                short = full.model(input_ids=ids).logits[0, len(short_context) :]
            long = metrics.long_positions(ref, metrics.reference(short), cont[1:])
        return cls(cont[:-1], cont[1:], ref, g, long)


def fidelity_rows(c: Compressed, ref: FidelityRef) -> Timed:
    """Per-row fidelity metrics of a (stacked) compressed cache against ``ref``."""
    start = time.perf_counter()
    true_logits = forward_logits(c, ref.inputs)
    greedy_logits = forward_logits(c, ref.greedy[:-1])
    seconds = time.perf_counter() - start
    rows = [
        {
            **metrics.fidelity(true_logits[r], ref.targets, ref.logprobs, greedy_logits[r], ref.greedy[1:], ref.long),
            "target_logprobs": metrics.target_logprobs(true_logits[r], ref.targets),
        }
        for r in range(true_logits.shape[0])
    ]
    return Timed(rows, seconds)


def mean_held(stats: Stats) -> float:
    return sum(stats.tokens_held) / max(1, len(stats.tokens_held))


__all__ = [
    "FidelityRef",
    "answer_last_token",
    "answer_rows",
    "fidelity_rows",
    "forward_logits",
    "greedy_continuation",
    "groups",
    "read_stats",
    "sparse_cell",
    "stack",
]
