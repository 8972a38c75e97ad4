from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.full import reconstruction_scores
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.precision import auto_precision
from tokensieve.core.ops.select import global_counts
from tokensieve.errors import check_choice
from tokensieve.kv.heads import evict_layer, evict_to_counts
from tokensieve.kv.methods.base import Method
from tokensieve.runtime.prompts import PromptFormat

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer

PROMPT = "Repeat the previous context exactly."


@dataclass
class KVzip(Method):
    """Context reconstruction: after the prefill the model is asked to repeat the context, which is teacher-forced
    after that prompt ``chunk`` tokens at a time on forks of the full cache. A pair's score is the most attention
    any reconstruction query of its GQA group pays it: what the model reads to reproduce the context is what a
    later question can need. ``stride``/``sample`` score every n-th query / reconstruct a share of the chunks.
    One pass per prefill, shared by kvzip and kvzip+ (``Prefill.memo``). ``scope="global"`` (default, measured
    best) spends the whole cache's budget on one top-k over every layer and head, as KVzip does (ragged; each
    head keeps one slot at least), so it takes no allocator but ``uniform``; ``scope="layer"`` leaves budgets to the
    allocator. Against kvpress's ``KVzipPress`` (benchmarks/unseen_kvpress/agreement.py) the ranks differ by rule:
    kvpress takes the max over every replay token, its prompt's included, and those rows (which see the context but
    not the chunk) dominate where attention is flat: on a tiny random model its score is Spearman 1.000 with the max
    over all replay rows and 0.07-0.27 with the chunk's rows alone, which is what this method scores."""

    id = "kvzip"
    paper = "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction (Kim et al., 2025)"
    rule = "max over reconstruction queries (repeat-the-context, teacher-forced, chunked) of A[i, j]"

    chunk: int = 512
    stride: int = 1
    sample: float = 1.0
    prompt: str = PROMPT
    scope: str = "global"
    # "auto": bf16 where the device computes it natively (AVX512-BF16 / AMX CPUs, bf16 GPUs; same scores and
    # answers on fresh samples, about half the time: benchmarks/kvzip_precision), else fp32
    # default fp32: in bf16 a left-padded row no longer scores exactly as that row alone (tests/test_cache.py)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_choice("scope", self.scope, ("layer", "global"))
        check_choice("precision", self.precision, ("auto", "fp32", "bf16"))

    def precision_on(self, device: Any) -> str:
        """The precision the pass runs in on ``device`` ("auto" resolved)."""
        return auto_precision(device) if self.precision == "auto" else self.precision

    def needs(self) -> Needs:
        return Needs(whole_pass=True)

    @property
    def global_budget(self) -> bool:
        return self.scope == "global"

    def weigh(self, score: Tensor, values: Tensor) -> Tensor:
        return score

    def pass_group(self) -> str:
        """How the pass reduces a GQA group's query heads: "max" (KVzip)."""
        return "max"

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        precision = self.precision_on(pre.model.device)
        key = ("reconstruction", self.chunk, self.stride, self.sample, self.prompt, self.pass_group(), precision)
        if key not in pre.memo:
            tok = pre.tokenizer
            prompt_ids = PromptFormat(tok).question_ids(self.prompt) if tok is not None and self.prompt else []
            pre.memo[key] = reconstruction_scores(
                pre.model, pre.cache, pre.context_ids, pre.context_mask, prompt_ids, self.chunk, self.stride,
                sample=self.sample, compute=torch.bfloat16 if precision == "bf16" else torch.float32,
                group=self.pass_group(),
            )  # fmt: skip
        values = {layer.layer_idx: layer.values for layer in pre.cache.sieve_layers}
        scores = {i: self.weigh(s, values[i]) for i, s in pre.memo[key].items()}
        shared = {"scores": scores, "counts": {}}
        return {i: (s, shared) for i, s in scores.items()}

    def score(self, x: ScoreInputs) -> Tensor:
        return x.require_pass_score()[0]

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        own, shared = x.require_pass_score()
        if self.scope == "layer":
            return evict_layer(layer, own, budget, *self.protected(budget), allocator, inplace)
        if budget not in shared["counts"]:  # one top-k over every layer's scores, once per budget
            shared["counts"][budget] = global_counts(shared["scores"], budget, x.valid)
        return evict_to_counts(layer, own, shared["counts"][budget][layer.layer_idx], inplace)
