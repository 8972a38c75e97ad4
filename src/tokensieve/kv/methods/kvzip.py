from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.full import reconstruction_scores
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import rank
from tokensieve.errors import ParameterError
from tokensieve.kv.heads import evict_layer
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer

PROMPT = "Repeat the previous context exactly."


@dataclass
class KVzip(Method):
    """Context reconstruction: after the prefill, the model is asked to repeat the context and the context is
    teacher-forced after that prompt, ``chunk`` tokens at a time, each chunk on a fork of the full cache. A
    cached pair's score is the largest attention any reconstruction query (of its GQA group) pays it: what the
    model must read to reproduce the context is what any later question can need. ``stride`` > 1 scores only
    every stride-th reconstruction query (all are still fed); ``sample`` < 1 reconstructs only that fraction of
    the chunks (the pass's cost falls with it). The prompt is the chat question turn
    (``PromptFormat.question_ids``); without a tokenizer the context alone is teacher-forced. The pass runs
    once per prefill and is shared by kvzip and kvzip+ (``Prefill.memo``).

    ``scope="global"`` spends the whole cache's budget (every layer's budget summed) on one top-k over every
    layer's and head's scores, as KVzip's reference does, so layers and heads keep what they need (a ragged
    cache; each head keeps at least one slot): the default, measured best. ``scope="layer"`` leaves the budgets to the
    allocator."""

    id = "kvzip"
    paper = "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction (Kim et al., 2025)"
    rule = "max over reconstruction queries (repeat-the-context, teacher-forced, chunked) of A[i, j]"

    chunk: int = 512
    stride: int = 1
    sample: float = 1.0
    prompt: str = PROMPT
    scope: str = "global"
    precision: str = "fp32"  # "bf16": the pass's matmuls in bfloat16 (fast on AMX / AVX512-BF16 CPUs and GPUs)

    def __post_init__(self) -> None:
        if self.scope not in ("layer", "global"):
            raise ParameterError(f"scope={self.scope!r}: use 'layer' or 'global'")
        if self.precision not in ("fp32", "bf16"):
            raise ParameterError(f"precision={self.precision!r}: use 'fp32' or 'bf16'")

    def needs(self) -> Needs:
        return Needs(full=True)

    def weigh(self, score: Tensor, values: Tensor) -> Tensor:
        return score

    def full_pass(self, pre: Any) -> dict[int, Any]:
        key = ("reconstruction", self.chunk, self.stride, self.sample, self.prompt, self.precision)
        if key not in pre.memo:
            prompt_ids: list[int] = []
            if pre.tokenizer is not None and self.prompt:
                from tokensieve.runtime.prompts import PromptFormat

                prompt_ids = PromptFormat(pre.tokenizer).question_ids(self.prompt)
            pre.memo[key] = reconstruction_scores(
                pre.model, pre.cache, pre.context_ids, pre.context_mask, prompt_ids, self.chunk, self.stride,
                sample=self.sample, compute=torch.bfloat16 if self.precision == "bf16" else torch.float32,
            )  # fmt: skip
        layers = {layer.layer_idx: layer for layer in pre.cache.sieve_layers}
        scores = {i: self.weigh(s, layers[i].values) for i, s in pre.memo[key].items()}
        shared = {"scores": scores, "counts": {}}
        return {i: (s, shared) for i, s in scores.items()}

    def score(self, x: ScoreInputs) -> Tensor:
        return x.full_score()[0]

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        own, shared = x.full_score()
        if self.scope == "layer":
            return evict_layer(layer, own, budget, *self.protected(budget), allocator, inplace)
        from tokensieve.kv.cache.ragged import RaggedLayer

        counts = shared["counts"].get(budget)
        if counts is None:
            counts = shared["counts"][budget] = global_counts(shared["scores"], budget, x.valid)
        c = counts[layer.layer_idx]
        if bool((c == c.flatten()[0]).all()):
            return evict_layer(layer, own, int(c.flatten()[0]), 0, 0, None, inplace)
        return RaggedLayer.from_dense(layer, rank(own, x.valid), c)


def global_counts(scores: dict[int, Tensor], budget: int, valid: Tensor | None) -> dict[int, Tensor]:
    """Per layer ``[B, Hkv]``: how many of each head's slots are among the top ``budget x layers x heads`` scores
    of its row over the whole cache (at least one per head)."""
    ids = sorted(scores)
    s = torch.stack([scores[i].float() for i in ids], 1)  # [B, L, Hkv, T]
    if valid is not None:
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    b, n_layers, h, t = s.shape
    top = s.reshape(b, -1).topk(min(budget * n_layers * h, n_layers * h * t), -1).indices
    hit = torch.zeros(b, n_layers * h * t, dtype=torch.long, device=s.device).scatter_(1, top, 1)
    per_head = hit.view(b, n_layers, h, t).sum(-1).clamp(min=1)
    return {i: per_head[:, n] for n, i in enumerate(ids)}


@dataclass
class KVzipPlus(KVzip):
    """KVzip scaled by what the pair can contribute to an output: the reconstruction score times ``||v_j||``."""

    id = "kvzip+"
    rule = "kvzip's score times ||v_j||"

    def weigh(self, score: Tensor, values: Tensor) -> Tensor:
        return score * values.float().norm(dim=-1)
