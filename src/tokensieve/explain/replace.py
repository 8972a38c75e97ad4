"""Replacers: what a token becomes when a method or a test removes it (positions never move).

``PredictionReplacer`` (ReAGent's default here) draws each replacement from the model's own top
predictions for that position given the original prefix, excluding the original token, so it needs
nothing but the model (no POS tagger, no download). Its predictions come from one forward: a hook on the
output embedding takes the final hidden states and lets only the last row through, then the vocabulary
projection runs in chunks of rows, so no ``[T, vocab]`` tensor exists.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tokensieve.explain.target import ExplainError, Problem


@contextmanager
def final_hidden(model: torch.nn.Module, out: list[Tensor]):
    """Capture the input of the output embedding (the final hidden states) and pass on only its last row."""
    head = model.get_output_embeddings()

    def pre(_mod: torch.nn.Module, args: tuple) -> tuple:
        out.append(args[0].detach())
        return (args[0][:, -1:],)

    handle = head.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()
    if not out:
        raise ExplainError("the output embedding never ran, so the replacer saw no hidden states")


@dataclass
class BaselineReplacer:
    """Every removed token becomes ``problem.baseline_id``."""

    def fit(self, problem: Problem) -> None:
        self.problem = problem

    def __call__(self, masks: Tensor, gen: torch.Generator) -> Tensor:
        return self.problem.replaced(masks)


@dataclass
class PredictionReplacer:
    top: int = 8  # candidates per position, drawn in proportion to the model's probability
    chunk: int = 256
    _cand: Tensor = field(init=False, repr=False, default=None)  # type: ignore[assignment]
    _prob: Tensor = field(init=False, repr=False, default=None)  # type: ignore[assignment]

    def fit(self, problem: Problem) -> None:
        self.problem, model, hidden = problem, problem.model, []
        with torch.no_grad(), final_hidden(model, hidden):
            model(input_ids=problem.ids[None], use_cache=False, logits_to_keep=0)
        rows = torch.arange(problem.ctx_start - 1, problem.ctx_end - 1).clamp_min(0)  # row t-1 predicts token t
        h = hidden[0][0, rows.to(hidden[0].device)]
        orig = problem.ids[problem.ctx_start : problem.ctx_end]
        cands, probs = [], []
        for s in range(0, h.shape[0], self.chunk):
            logits = model.get_output_embeddings()(h[s : s + self.chunk]).float()
            logits.scatter_(-1, orig[s : s + self.chunk, None], float("-inf"))  # never the original token
            p, c = torch.softmax(logits, -1).topk(self.top, -1)
            cands.append(c)
            probs.append(p)
        self._cand, self._prob = torch.cat(cands).cpu(), torch.cat(probs).cpu()
        if problem.ctx_start == 0:  # nothing predicts the first token: it becomes the baseline token
            self._cand[0], self._prob[0] = problem.baseline_id, 1.0

    def __call__(self, masks: Tensor, gen: torch.Generator) -> Tensor:
        ids = self.problem.ids.expand(masks.shape[0], -1).clone()
        pick = torch.multinomial(self._prob, masks.shape[0], replacement=True, generator=gen)  # [n, B]
        draw = self._cand.gather(1, pick).T.to(ids.device)
        ctx = ids[:, self.problem.ctx_start : self.problem.ctx_end]
        ctx[masks] = draw[masks]
        return ids
