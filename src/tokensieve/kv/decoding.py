"""One entry point for the decode-time families: eviction while generating, sparse reads, prefill pruning.

ans = tokensieve.decode(model, tok, long_text, "What is the pass key?", "h2o", budget=256)
ans = tokensieve.decode(model, tok, long_text, "What is the pass key?", "quest", read=1 / 8, measure=True)
ans = tokensieve.decode(model, tok, long_text, "What is the pass key?", "lazyllm")
ans.text, ans.stats   # measured: time to first token, tokens/s, peak KV bytes, read fraction, recall...

The question is part of the prompt (these methods act while the model reads and answers it). The method
id picks the family; each family's cache also works on its own with ``model.generate``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from tokensieve import compat
from tokensieve.core.observe.hooks import engaged, prepare
from tokensieve.core.ops.memory import layers_bytes
from tokensieve.errors import EmptyContextError, UnknownMethodError, check_count
from tokensieve.kv.evicting import DECODE_RULES, DecodeCache, check_decode_budget
from tokensieve.kv.prune import PRUNERS, prune
from tokensieve.kv.sparse import SPARSE, SparseCache, check_read
from tokensieve.runtime.prompts import PromptFormat, StopAtText, clean_answer

FAMILIES = ("decode eviction", "sparse decoding", "prefill pruning")


def decode_family(method: str) -> str:
    if method in PRUNERS:
        return "prefill pruning"
    if method in SPARSE:
        return "sparse decoding"
    if method in DECODE_RULES:
        return "decode eviction"
    raise UnknownMethodError(
        f"method {method!r} does not act at decode time; choose one of: decode eviction "
        f"({', '.join(DECODE_RULES)}), sparse decoding ({', '.join(SPARSE)}), prefill pruning ({', '.join(PRUNERS)})"
    )


@dataclass
class DecodeStats:
    method: str
    family: str
    prompt_tokens: int
    new_tokens: int = 0
    ttft_seconds: float = 0.0  # the prompt's forward and the first token
    decode_seconds: float = 0.0  # every later token
    kv_bytes: int = 0  # held by the cache after the last step (measured)
    peak_kv_bytes: int = 0  # the most held after any step (measured)
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific: state bytes, read fraction, ...

    @property
    def tokens_per_second(self) -> float:
        return (self.new_tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


@dataclass
class DecodeAnswer:
    text: str
    tokens: list[int]
    stats: DecodeStats


def kv_bytes(cache) -> int:
    """Bytes held by every layer's key and value tensors (storages, counted once); unlike
    ``SieveCache.kv_bytes``, never pages (a paged cache reports those in ``extra``)."""
    return layers_bytes(cache.layers)


class DecodeMeter(StoppingCriteria):
    """Called by ``generate`` after every step: times the first token and samples the cache's bytes."""

    def __init__(self, cache) -> None:
        self.cache, self.start, self.first, self.last, self.peak = cache, time.perf_counter(), None, None, 0

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.peak = max(self.peak, kv_bytes(self.cache))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    question: str,
    method: str,
    *,
    budget: int | None = None,
    read: float | int | None = None,
    prefill: str | None = None,
    prefill_keep: float | None = None,
    prefill_budget: int | None = None,
    max_new_tokens: int = 32,
    answer_prefix: str = "",
    measure: bool = False,
    **params: Any,
) -> DecodeAnswer:
    """Answer ``question`` about ``context`` with a decode-time method (greedy). ``budget``: tokens per head
    for decode eviction (required there, except for ratio_decoding and dms, which decide their share); ``read``:
    the read budget of sparse decoding (default 1/8);
    ``prefill``/``prefill_keep``/``prefill_budget``: prefill compression before decode eviction; ``params``
    go to the method (e.g. ``keep=(0.7, 0.5)`` for a pruner); ``measure``: sparse selection recall."""
    family = decode_family(method)
    check_count("max_new_tokens", max_new_tokens)
    if not context.strip():
        raise EmptyContextError("the context is empty: pass the text to read")
    if family != "decode eviction" and (budget is not None or prefill is not None):
        raise TypeError(f"budget / prefill apply to decode eviction, not to {family} ({method})")
    if family != "sparse decoding" and read is not None:
        raise TypeError(f"read applies to sparse decoding, not to {family} ({method})")
    prepare(model)
    fmt = PromptFormat(tokenizer)
    ids = torch.tensor([fmt.context_ids(context) + fmt.question_ids(question, answer_prefix)], device=model.device)
    extra: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if family == "decode eviction":
            if budget is not None:
                check_decode_budget(budget)
            cache = DecodeCache(
                model, method, budget, prefill=prefill, prefill_keep=prefill_keep, prefill_budget=prefill_budget,
                **params,
            )  # fmt: skip
        elif family == "sparse decoding":
            cache = SparseCache(model, method, read=check_read(0.125 if read is None else read),
                                tokenizer=tokenizer, measure=measure, **params)  # fmt: skip
        else:
            cache = stack.enter_context(prune(model, method, **params))
        meter = DecodeMeter(cache)
        criteria = [meter] + ([] if fmt.chat else [StopAtText(tokenizer, ids.shape[1])])
        with torch.inference_mode(), engaged(cache, model, f"{family} ({method})"):
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **compat.with_cache(model, cache),
                max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                stopping_criteria=criteria, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )  # fmt: skip
        if family == "decode eviction":
            extra = {"budget": budget, "state_bytes": cache.state_bytes(), "peak_tokens_held": cache.peak_tokens_held()}
            extra["kept_ratio"] = round(cache.kept_ratio(), 4)  # measured; ratio_decoding's and dms's output
            if cache.paging is not None:  # what a paged engine would hold: pages x page bytes
                extra.update(pages=cache.paging.size, paged_kv_bytes=cache.kv_bytes())
        elif family == "sparse decoding":
            extra = {"read": cache.read, **cache.report()}
        else:
            engine = cache.engine
            extra = {"alive_per_layer": engine.alive_per_layer, "revived": sum(engine.revived.values())}
    new = out[0, ids.shape[1] :].tolist()
    stats = DecodeStats(
        method=method,
        family=family,
        prompt_tokens=ids.shape[1],
        new_tokens=len(new),
        ttft_seconds=(meter.first or meter.start) - meter.start,
        decode_seconds=(meter.last or meter.start) - (meter.first or meter.start),
        kv_bytes=kv_bytes(cache),
        peak_kv_bytes=meter.peak,
        extra=extra,
    )
    return DecodeAnswer(clean_answer(tokenizer.decode(new, skip_special_tokens=True)), new, stats)


__all__ = ["FAMILIES", "DecodeAnswer", "DecodeStats", "decode", "decode_family"]
