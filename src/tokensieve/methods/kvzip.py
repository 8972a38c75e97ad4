from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..observe.capture import Needs
from ..observe.full import reconstruction_scores
from ..score.inputs import ScoreInputs
from .base import Method

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
    once per prefill and is shared by kvzip and kvzip+ (``Prefill.memo``)."""

    id = "kvzip"
    paper = "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction (Kim et al., 2025)"
    rule = "max over reconstruction queries (repeat-the-context, teacher-forced, chunked) of A[i, j]"

    chunk: int = 512
    stride: int = 1
    sample: float = 1.0
    prompt: str = PROMPT

    def needs(self) -> Needs:
        return Needs(full=True)

    def full_pass(self, pre: Any) -> dict[int, Tensor]:
        key = ("reconstruction", self.chunk, self.stride, self.sample, self.prompt)
        if key not in pre.memo:
            prompt_ids: list[int] = []
            if pre.tokenizer is not None and self.prompt:
                from ..prompts import PromptFormat

                prompt_ids = PromptFormat(pre.tokenizer).question_ids(self.prompt)
            pre.memo[key] = reconstruction_scores(
                pre.model,
                pre.cache,
                pre.context_ids,
                pre.context_mask,
                prompt_ids,
                self.chunk,
                self.stride,
                sample=self.sample,
            )
        return pre.memo[key]

    def score(self, x: ScoreInputs) -> Tensor:
        return x.full_score()


@dataclass
class KVzipPlus(KVzip):
    """KVzip scaled by what the pair can contribute to an output: the reconstruction score times ``||v_j||``."""

    id = "kvzip+"
    rule = "kvzip's score times ||v_j||"

    def score(self, x: ScoreInputs) -> Tensor:
        return x.full_score() * x.values.float().norm(dim=-1)
