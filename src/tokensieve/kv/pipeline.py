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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve import compat
from tokensieve.core.observe.capture import LayerObservation, Needs
from tokensieve.core.observe.hooks import engaged, prepare
from tokensieve.core.ops.memory import layers_bytes
from tokensieve.errors import BatchError, EmptyContextError, ParameterError, TokenSieveError, check_count
from tokensieve.kv.budget import Allocator
from tokensieve.kv.cache import SieveCache, SieveLayer
from tokensieve.kv.methods import Method, get_method
from tokensieve.kv.observed import forward, observe_prefill
from tokensieve.kv.pages import paged_kv_bytes
from tokensieve.kv.plan import Plan, compress_layer, real_length
from tokensieve.runtime.encode import Context, encode_context, left_pad, pad_id_of
from tokensieve.runtime.prompts import PromptFormat, StopAtText, clean_answer, stop_ids


@dataclass
class Stats:
    context_tokens: int
    kv_bytes_full: int
    kv_bytes: int = 0
    tokens_held: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    compress_seconds: float = 0.0
    decode_seconds: float = 0.0
    new_tokens: int = 0
    kv_bytes_sliding: int = 0  # of kv_bytes, what the sliding-window layers hold (hybrid models)

    @classmethod
    def measure(
        cls, cache: SieveCache, context_tokens: int, kv_bytes_full: int, prefill_seconds: float, compress_seconds: float
    ) -> Stats:
        """What ``cache`` holds, measured now (bytes from its tensors' storages, slots per head), beside the full
        cache's bytes and the seconds spent: the one way every ``Compressed`` gets its stats."""
        sliding = layers_bytes([layer for layer in cache.layers if compat.is_sliding_layer(layer)], _held_by)
        return cls(
            context_tokens, kv_bytes_full, cache.kv_bytes(), cache.tokens_held(), prefill_seconds, compress_seconds,
            kv_bytes_sliding=sliding,
        )  # fmt: skip

    @property
    def ratio(self) -> float:
        return self.kv_bytes / self.kv_bytes_full if self.kv_bytes_full else 1.0


@dataclass
class Compressed:
    """A compressed context, ready for questions. Each question runs on a fork of the cache, so the
    compressed cache itself is never changed and can answer any number of questions."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    cache: SieveCache
    context_ids: Tensor
    context_mask: Tensor | None
    stats: Stats
    method: str = "full"
    keep: float | None = None

    @property
    def fmt(self) -> PromptFormat:
        if self.tokenizer is None:
            raise TypeError("text questions need a tokenizer")
        return PromptFormat(self.tokenizer)

    def generate(self, question_ids: Tensor, question_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        """``model.generate`` on a fork of the cache; returns only the new tokens ``[N, L]``.

        ``question_ids [N, Lq]`` (left-padded, mask given) are appended after the context. With N
        questions and one context row, the cache is repeated N times in the fork.
        """
        n, b = question_ids.shape[0], self.context_ids.shape[0]
        if question_mask is not None and not bool(question_mask.all()) and self.cache.has_sliding_layers:
            # sliding windows count slots, so padding between context and question would shrink them:
            # run such questions one by one instead (exact), and right-pad the answers
            return self._one_by_one(question_ids, question_mask, **kwargs)
        cache = self.cache.fork()
        ctx_ids, ctx_mask = self.context_ids, self.context_mask
        if n != b and n == 1:  # one question asked of every context row
            question_ids = question_ids.expand(b, -1)
            question_mask = None if question_mask is None else question_mask.expand(b, -1)
            n = b
        if n != b:
            if b != 1:
                raise BatchError(f"{n} questions for {b} contexts: give one question, or one per context row")
            cache.batch_repeat_interleave(n)
            ctx_ids = ctx_ids.expand(n, -1)
        if ctx_mask is None:
            ctx_mask = torch.ones_like(ctx_ids)
        elif ctx_mask.shape[0] != n:
            ctx_mask = ctx_mask.expand(n, -1)
        if question_mask is None:
            question_mask = torch.ones_like(question_ids)
        input_ids = torch.cat([ctx_ids, question_ids], -1).to(self.model.device)
        mask = torch.cat([ctx_mask, question_mask], -1).to(self.model.device)
        pad = pad_id_of(self.tokenizer, self.model)
        if self.tokenizer is not None and not PromptFormat(self.tokenizer).chat and "stopping_criteria" not in kwargs:
            # base models run on past the answer into the next "Question:"; stop there
            kwargs["stopping_criteria"] = [StopAtText(self.tokenizer, input_ids.shape[1])]
        stop = stop_ids(self.tokenizer, self.model.generation_config)
        if stop and "eos_token_id" not in kwargs:  # the model's end of turn too, not only its config's <eos>
            kwargs["eos_token_id"] = stop
        kwargs.setdefault("do_sample", False)
        if not kwargs["do_sample"]:
            kwargs.setdefault("temperature", None)
            kwargs.setdefault("top_p", None)
            kwargs.setdefault("top_k", None)
        start = time.perf_counter()
        with torch.inference_mode(), engaged(cache, self.model, f"the {self.method} cache"):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                **compat.with_cache(self.model, cache),
                pad_token_id=pad,
                **kwargs,
            )
        self.stats.decode_seconds = time.perf_counter() - start
        self.stats.new_tokens = out.shape[1] - input_ids.shape[1]
        return out[:, input_ids.shape[1] :]

    def _one_by_one(self, question_ids: Tensor, question_mask: Tensor, **kwargs: Any) -> Tensor:
        outs = []
        for row in range(question_ids.shape[0]):
            keep = question_mask[row].bool()
            sub = self if self.context_ids.shape[0] == 1 else self._row(row)
            outs.append(sub.generate(question_ids[row : row + 1, keep], **kwargs)[0])
        pad = pad_id_of(self.tokenizer, self.model)
        width = max(len(o) for o in outs)
        return torch.stack([torch.cat([o, o.new_full((width - len(o),), pad)]) for o in outs])

    def _row(self, row: int) -> Compressed:
        cache = self.cache.fork()
        cache.batch_select_indices(torch.tensor([row]))
        mask = None if self.context_mask is None else self.context_mask[row : row + 1]
        return Compressed(
            self.model, self.tokenizer, cache, self.context_ids[row : row + 1], mask, self.stats, self.method, self.keep
        )

    def answer(
        self, question: str | Sequence[str], max_new_tokens: int = 32, answer_prefix: str = "", **kwargs: Any
    ) -> str | list[str]:
        """Greedy (or sampled, with ``do_sample=True``) answers, decoded and stripped. ``answer_prefix``
        starts each answer for the model (see ``PromptFormat.question_ids``) and is not returned."""
        check_count("max_new_tokens", max_new_tokens)
        questions = [question] if isinstance(question, str) else list(question)
        if not questions or not all(isinstance(q, str) for q in questions):
            raise ParameterError(f"question {question!r} must be a string or a list of strings")
        fmt = self.fmt
        rows = [fmt.question_ids(q, answer_prefix) for q in questions]
        ids, mask = left_pad(rows, pad_id_of(self.tokenizer, self.model))
        new = self.generate(ids, mask, max_new_tokens=max_new_tokens, **kwargs)
        texts = [clean_answer(self.tokenizer.decode(row, skip_special_tokens=True)) for row in new]
        return texts[0] if isinstance(question, str) and len(texts) == 1 else texts


@dataclass
class Prefill:
    """A full cache plus what the prefill observed: compress it any number of ways without re-running it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    cache: SieveCache
    observations: dict[int, LayerObservation]
    context_ids: Tensor
    context_mask: Tensor | None
    needs: Needs
    seconds: float
    last_logits: Tensor | None = None
    hidden: Tensor | None = None  # final hidden states [B, T, d], when a method needs them (Needs.final_hidden)
    memo: dict[Any, Any] = field(default_factory=dict)  # full-pass results, shared by the methods that reuse them

    @property
    def context_tokens(self) -> int:
        return real_length(
            self.context_mask.bool() if self.context_mask is not None else None, self.context_ids.shape[1]
        )

    def full(self) -> Compressed:
        """The uncompressed cache (a fork), as the reference row."""
        stats = Stats.measure(self.cache, self.context_tokens, self.cache.kv_bytes(), self.seconds, 0.0)
        return Compressed(
            self.model,
            self.tokenizer,
            self.cache.fork(),
            self.context_ids,
            self.context_mask,
            stats,
            "full",
            1.0,
        )

    def compress(
        self,
        method: str | Method,
        keep: float | None = None,
        budget: int | None = None,
        allocator: str | Allocator = "uniform",
        **params: Any,
    ) -> Compressed:
        plan = Plan.make(method, keep=keep, budget=budget, allocator=allocator, **params).bind(self.model)
        plan.fit_hybrid(self.cache, self.context_tokens)
        if plan.method.changes_prefill:
            raise TokenSieveError(
                f"{plan.method.id} changes the attention of the prefill itself, which has already run: "
                "use tokensieve.compress / generate (or SieveCache(model, ...)) instead of prefill().compress()"
            )
        missing = _missing(plan.method.needs(), self.needs)
        if missing:
            raise ValueError(f"the prefill did not observe {missing} for {plan.method.id}: pass it in methods=")
        start = time.perf_counter()
        full = plan.method.full_pass(self) or {}  # after the prefill, on forks of its cache
        cache = self.cache.fork()
        layers = cache.sieve_layers
        budgets = plan.layer_budgets(self.context_tokens, len(layers))
        cache.paging = plan.pages
        for k, layer in zip(budgets, layers, strict=True):
            obs = self.observations.get(layer.layer_idx)
            new = compress_layer(
                layer,
                plan.method,
                k,
                obs,
                len(layers),
                allocator=plan.allocator,
                full=full.get(layer.layer_idx),
                pages=plan.pages,
            )
            compat.set_cache_layer(cache, layer.layer_idx, new)
        plan.cut_windows(cache, self.context_mask)
        seconds = time.perf_counter() - start
        full_bytes = self.cache.kv_bytes() if plan.pages is None else paged_kv_bytes(self.cache, plan.pages)
        stats = Stats.measure(cache, self.context_tokens, full_bytes, self.seconds, seconds)
        return Compressed(
            self.model,
            self.tokenizer,
            cache,
            self.context_ids,
            self.context_mask,
            stats,
            plan.method.id,
            keep,
        )


def _held_by(layer: Any) -> list:
    return layer.held_tensors() if isinstance(layer, SieveLayer) else [layer.keys, layer.values]


def _missing(need: Needs, have: Needs) -> str:
    parts = []
    if need.final_hidden and not have.final_hidden:
        parts.append("the final hidden states")
    if need.window > have.window:
        parts.append(f"a window of {need.window} queries")
    if need.probes > have.probes:
        parts.append(f"{need.probes:.0%} probe queries")
    if not need.stats <= have.stats:
        parts.append(", ".join(s.key for s in need.stats - have.stats))
    return "; ".join(parts)


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
    if plan.method.needs().full:  # scored from the whole prefilled cache: prefill it, then compress
        pre = prefill(model, tokenizer, context, methods=[plan.method])
        plan.mean_budget(pre.context_tokens)
        hybrid = {"hybrid": plan.hybrid.policy, "min_window": plan.hybrid.min_window}
        return pre.compress(plan.method, keep=keep, budget=budget, allocator=plan.allocator, **hybrid)
    prepare(model)
    plan.bind(model)
    fmt = PromptFormat(tokenizer) if tokenizer is not None else None
    ids, mask = encode_context(context, fmt, pad_id_of(tokenizer, model))
    n_tokens = real_length(None if mask is None else mask.bool(), ids.shape[1])
    plan.mean_budget(n_tokens)  # validates the budget against the context before any work
    cache = SieveCache(model.config)
    plan.fit_hybrid(cache, n_tokens)
    plan.attach(cache)
    start = time.perf_counter()
    forward(model, ids, mask, cache, f"compression ({plan.method.id})")
    total = time.perf_counter() - start
    # measured: each full layer's bytes just before its eviction, plus the layers that were not compressed
    others = layers_bytes(layer for layer in cache.layers if not isinstance(layer, SieveLayer))
    plan.cut_windows(cache, mask)
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
