"""``block``: true chunked prefill under a budget (KeyDiff's block-wise prefill). The context runs ``block`` tokens
at a time into one cache; in every full-attention layer, right after a block's attention, the layer is cut back to
its budget by a query-agnostic score of what it holds (kept tokens plus the new block). A layer therefore never
holds more than budget + block tokens (the first block takes the remainder of the context, up to 2 x block - 1
tokens with nothing held yet, so the bound is max(budget + block, that block)), and the full cache of the context
never exists (kvpress prefills everything first). Positions keep counting the tokens seen
(``SieveLayer.cumulative_length``), so later tokens and questions sit where they would after a full prefill; with
``rerotate`` (``method="rerotate", base="keydiff"``) the held tokens are renumbered to 0 .. n-1 after every block
instead, so no position exceeds budget + block and a document longer than the trained window can be read.

The score is any method that ranks from what one forward shows: keys, values and the last queries of the block
(keydiff, knorm, snapkv, tova, lagkv, streaming, ...). A method that needs the whole prefill (kvzip), all-query
statistics or probes, each token's attention input, or acts on the layer its own way is refused: it could not
judge a held token again from one block's forward.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve import compat
from tokensieve.core.observe.capture import observe
from tokensieve.core.observe.hooks import prepare
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import BatchError, ParameterError
from tokensieve.kv.cache import CompressibleCache, SieveLayer
from tokensieve.kv.compressed import Compressed
from tokensieve.kv.methods import Method
from tokensieve.kv.methods.block import check_blockwise
from tokensieve.kv.observed import forward
from tokensieve.kv.plan import Plan, compress_layer
from tokensieve.kv.stats import Stats
from tokensieve.runtime.encode import Context, encode_context, pad_id_of
from tokensieve.runtime.prompts import PromptFormat


def compress_blocks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    context: Context,
    method: str | Method,
    keep: float | None = None,
    budget: int | None = None,
    block: int = 128,
    **params: Any,
) -> Compressed:
    """Prefill ``context`` ``block`` tokens at a time, each full-attention layer cut back to its budget (``keep``
    of the context, or ``budget`` tokens per KV head) after every block. One context row, no padding."""
    if block < 1:
        raise ParameterError(f"block {block} must be a positive number of tokens, e.g. 128")
    plan = Plan.make(method, keep=keep, budget=budget, **params)
    if plan.method.own_prefill:
        raise ParameterError(f"compress_blocks takes the score itself (e.g. 'keydiff'); {plan.method.id!r} is the id "
                             "tokensieve.compress reads block by block")  # fmt: skip
    check_blockwise(plan.method)
    if plan.method.needs().window > block:
        raise ParameterError(f"block {block} is shorter than {plan.method.id}'s window of "
                             f"{plan.method.needs().window} queries: use a larger block")  # fmt: skip
    prepare(model)
    plan.bind(model)
    fmt = PromptFormat(tokenizer) if tokenizer is not None else None
    ids, mask = encode_context(context, fmt, pad_id_of(tokenizer, model))
    if ids.shape[0] != 1 or (mask is not None and not bool(mask.bool().all())):
        raise BatchError("block prefill reads one context row without padding")
    n_tokens = ids.shape[1]
    cache = CompressibleCache(model.config)
    if len(cache.sieve_layers) != len(cache.layers):
        raise ParameterError("block prefill: this model has sliding-window layers; use a full-attention model")
    layers = cache.sieve_layers
    budgets = dict(zip(layers, plan.layer_budgets(n_tokens, len(layers)), strict=True))
    need = plan.method.needs()
    peak = {"tokens": 0}
    seconds = 0.0

    def on_attention(layer: SieveLayer, query: Tensor, scaling: float) -> None:
        nonlocal seconds
        start = time.perf_counter()
        layer.on_attention = None  # observed for this block
        peak["tokens"] = max(peak["tokens"], layer.n_held)
        k = budgets[layer]
        if layer.n_held > k:
            obs = observe(need, query, layer.keys, layer.valid, scaling)
            obs.rows = obs.rows + (layer.n_held - query.shape[-2])  # the block's queries follow the held tokens
            x = ScoreInputs(layer.keys, layer.values, layer.valid, obs, layer.layer_idx, len(layers))
            new = compress_layer(layer, plan.method, k, x, inplace=True)
            if new is not layer:
                compat.set_cache_layer(cache, layer.layer_idx, new)
        seconds += time.perf_counter() - start

    start = time.perf_counter()
    # the first block takes the remainder (block to 2 x block - 1 tokens, nothing held yet), so every block has
    # at least `block` queries for a windowed score
    first = n_tokens - max(0, n_tokens // block - 1) * block
    held = ids[:, :0]  # the ids of the held slots, in the numbering the cache continues from
    for a, b in zip([0, *range(first, n_tokens, block)], range(first, n_tokens + 1, block), strict=True):
        for layer in cache.sieve_layers:
            layer.on_attention = on_attention
        forward(model, ids[:, a:b], None, cache, f"block prefill ({plan.method.id})")
        # rerotate renumbers the held tokens to 0 .. n-1 after every block: the next block continues at n
        held, _ = plan.finish(cache, torch.cat([held, ids[:, a:b]], -1), None)
    total = time.perf_counter() - start
    # the full cache never existed: its bytes are the held slots' bytes per slot times the context
    per_slot = cache.kv_bytes() / max(1, sum(layer.n_held for layer in cache.sieve_layers))
    stats = Stats.measure(cache, n_tokens, round(per_slot * n_tokens * len(layers)), total - seconds, seconds)
    stats.peak_tokens_held = peak["tokens"]
    return Compressed(model, tokenizer, cache, held, None, stats, f"block:{plan.method.id}", keep)
