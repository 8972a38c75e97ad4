"""A compressed context ready for questions (``Compressed``): batched generation on forks of its cache."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve import compat
from tokensieve.core.observe.hooks import engaged
from tokensieve.errors import BatchError, ParameterError, check_count
from tokensieve.kv.cache import CompressibleCache
from tokensieve.kv.stats import Stats
from tokensieve.runtime.encode import left_pad, pad_id_of
from tokensieve.runtime.prompts import PromptFormat, StopAtText, clean_answer, stop_ids


@dataclass
class Compressed:
    """A compressed context, ready for questions. Each question runs on a fork of the cache, so the
    compressed cache itself is never changed and can answer any number of questions."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    cache: CompressibleCache
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
