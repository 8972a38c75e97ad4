"""The user-facing flow: prefill a context (observing), compress its cache, then ask questions.

model, tok = tokensieve.load_model()
ctx = tokensieve.compress(model, tok, long_text, method="snapkv", keep=0.25)
ctx.answer("What is the pass key?")            # the question never influenced compression
ctx.answer(["Who?", "When?"])                  # several questions, one compressed cache

pre = tokensieve.prefill(model, tok, long_text, methods=["snapkv", "h2o"])   # prefill once...
for m in ("snapkv", "h2o"):
    pre.compress(m, keep=0.25).answer("...")   # ...compress many times
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.hooks import prepare
from tokensieve.core.ops.memory import layers_bytes
from tokensieve.errors import EmptyContextError
from tokensieve.kv.blockwise import compress_blocks
from tokensieve.kv.budget import Allocator
from tokensieve.kv.cache import CompressibleCache, SieveLayer
from tokensieve.kv.compressed import Compressed
from tokensieve.kv.methods import Method, get_method
from tokensieve.kv.methods.block import Block
from tokensieve.kv.observed import forward, observe_prefill
from tokensieve.kv.plan import Plan, real_length
from tokensieve.kv.prefilled import Prefill
from tokensieve.kv.stats import Stats
from tokensieve.runtime.encode import Context, encode_context, pad_id_of
from tokensieve.runtime.prompts import PromptFormat, clean_answer


def _needs(methods: Sequence[str | Method]) -> Needs:
    out = Needs()
    for m in methods:
        out = out | get_method(m).needs()
    return out


def prefill(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    context: Context,
    methods: Sequence[str | Method] = (),
    needs: Needs | None = None,
) -> Prefill:
    """Run the context once, keeping the full cache and what ``methods`` (or ``needs``) must observe."""
    prepare(model)
    fmt = PromptFormat(tokenizer) if tokenizer is not None else None
    ids, mask = encode_context(context, fmt, pad_id_of(tokenizer, model))
    needs = (needs or Needs()) | _needs(methods)
    obs = observe_prefill(model, ids, mask, needs)
    return Prefill(model, tokenizer, obs.cache, obs.observations, ids, mask, needs, obs.seconds, obs.logits, obs.hidden)


def compress(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    context: Context,
    method: str | Method,
    keep: float | None = None,
    budget: int | None = None,
    allocator: str | Allocator = "uniform",
    **params: Any,
) -> Compressed:
    """Prefill ``context`` and compress its cache with ``method``, each layer right after its attention,
    so the full cache never exists at once. ``keep`` is a fraction of the context, ``budget`` a count of
    tokens per KV head; exactly one is required."""
    plan = Plan.make(method, keep=keep, budget=budget, allocator=allocator, **params)
    if isinstance(plan.method, Block):  # the context is prefilled block by block, never whole (Plan.make refused pages)
        m = plan.method
        return compress_blocks(model, tokenizer, context, m.scorer, keep=keep, budget=budget, block=m.size,
                               allocator=plan.allocator)  # fmt: skip
    if plan.method.needs().whole_pass:  # scored from the whole prefilled cache: prefill it, then compress
        pre = prefill(model, tokenizer, context, methods=[plan.method])
        plan.mean_budget(pre.context_tokens)
        return pre.compress_plan(plan)  # the plan as made: its paging included
    prepare(model)
    plan.bind(model)
    fmt = PromptFormat(tokenizer) if tokenizer is not None else None
    ids, mask = encode_context(context, fmt, pad_id_of(tokenizer, model))
    n_tokens = real_length(None if mask is None else mask.bool(), ids.shape[1])
    plan.mean_budget(n_tokens)  # validates the budget against the context before any work
    cache = CompressibleCache(model.config)
    plan.fit_hybrid(cache, n_tokens)
    plan.attach(cache)
    start = time.perf_counter()
    forward(model, ids, mask, cache, f"compression ({plan.method.id})", plan.method.needs().layer_input)
    total = time.perf_counter() - start
    # measured: each full layer's bytes just before its eviction, plus the layers that were not compressed
    others = layers_bytes(layer for layer in cache.layers if not isinstance(layer, SieveLayer))
    plan.cut_windows(cache, mask)
    ids, mask = plan.finish(cache, ids, mask)
    stats = Stats.measure(cache, n_tokens, plan.full_bytes + others, total - plan.seconds, plan.seconds)
    return Compressed(model, tokenizer, cache, ids, mask, stats, plan.method.id, keep)


@dataclass
class Answer:
    text: str
    stats: Stats
    method: str
    keep: float | None
    budget: int | None
    query_aware: bool


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    question: str,
    method: str | Method,
    keep: float | None = None,
    budget: int | None = None,
    allocator: str | Allocator = "uniform",
    query_aware: bool = False,
    max_new_tokens: int = 32,
    answer_prefix: str = "",
    **params: Any,
) -> Answer:
    """One context, one question, one compressed cache.

    Query-agnostic (default): the context is compressed alone and the question comes afterwards, as when
    a cache is reused. Query-aware: the question is part of the compressed prompt (SnapKV's original
    setting, where the observation window covers it); only the prompt's final token is held back to
    start generation.
    """
    if not query_aware:
        ctx = compress(model, tokenizer, context, method, keep=keep, budget=budget, allocator=allocator, **params)
        text = ctx.answer(question, max_new_tokens=max_new_tokens, answer_prefix=answer_prefix)
        return Answer(text, ctx.stats, ctx.method, keep, budget, False)
    fmt = PromptFormat(tokenizer)
    if not context.strip():
        raise EmptyContextError("the context is empty: pass the text to compress")
    ids = fmt.context_ids(context) + fmt.question_ids(question, answer_prefix)
    ctx = compress(
        model,
        tokenizer,
        torch.tensor([ids[:-1]]),
        method,
        keep=keep,
        budget=budget,
        allocator=allocator,
        **params,
    )
    new = ctx.generate(torch.tensor([ids[-1:]]), max_new_tokens=max_new_tokens)
    text = clean_answer(tokenizer.decode(new[0], skip_special_tokens=True))
    return Answer(text, ctx.stats, ctx.method, keep, budget, True)


__all__ = ["Answer", "Compressed", "Prefill", "Stats", "compress", "generate", "prefill"]
