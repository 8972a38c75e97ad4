"""What an explanation explains: a prompt (context + question), the target tokens, and the one number
every method and every faithfulness test measures for them.

The target quantity is the answer's probability, the geometric mean of its per-token probabilities
under teacher forcing (one token when ``position`` is set), or with ``measure="logprob"`` its log, the mean
per-token log-probability (unbounded below, so it does not saturate where a probability drops to ~0 once one
part of the evidence is gone); a contrastive target is the difference
``p(answer) - p(alternative)`` ("why this and not that"). Models see ids or embeddings of the prompt
followed by the target tokens; only the target rows' logits are computed (``logits_to_keep``), so no
``[T, vocab]`` tensor exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.errors import TokenSieveError


class ExplainError(TokenSieveError, ValueError):
    pass


MEASURES = ("prob", "logprob")


@dataclass
class Target:
    ids: list[int]  # the answer tokens, teacher-forced after the prompt
    kind: str = "generated"  # generated | continuation | contrastive
    position: int | None = None  # explain only this answer token (None: all of them)
    alternative: list[int] | None = None  # contrastive: the answer it is compared against
    text: str = ""
    alternative_text: str = ""
    measure: str = "prob"  # prob | logprob (see the module docstring)

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ExplainError(f"target measure {self.measure!r} must be one of {', '.join(MEASURES)}")
        if not self.ids:
            raise ExplainError("the target is empty: the model generated nothing; pass a continuation= to explain")
        if self.position is not None and not -len(self.ids) <= self.position < len(self.ids):
            raise ExplainError(f"target position {self.position} is outside the {len(self.ids)} answer tokens")
        if self.alternative is not None and not self.alternative:
            raise ExplainError("the contrastive alternative is empty: pass the text of another answer")

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "text": self.text,
            "ids": self.ids,
            "position": self.position,
            "alternative": self.alternative_text or None,
            "measure": self.measure,
        }


@dataclass
class Problem:
    """A prompt ``ids [P]`` whose positions ``ctx_start:ctx_end`` are the context being explained."""

    model: torch.nn.Module
    ids: Tensor  # [P] long
    ctx_start: int
    ctx_end: int
    target: Target
    baseline_id: int  # what replaces a removed token (positions stay put)

    @property
    def n_context(self) -> int:
        return self.ctx_end - self.ctx_start

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def _prob(self, prompt: Tensor, answer: list[int], position: int | None = None) -> Tensor:
        """Geometric-mean probability of ``answer`` after each prompt row of ``prompt [B, P, d]`` (its log for
        the ``logprob`` measure)."""
        b = prompt.shape[0]
        ans = torch.tensor(answer, device=prompt.device)
        tail = self.embed(ans[:-1]).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([prompt, tail.to(prompt.dtype)], 1)
        logits = self.model(inputs_embeds=x, use_cache=False, logits_to_keep=len(answer)).logits
        logits = logits if logits.dtype == torch.float64 else logits.float()  # fp64 stays fp64 (test oracles)
        logp = torch.log_softmax(logits, -1).gather(-1, ans.expand(b, -1).unsqueeze(-1)).squeeze(-1)
        value = logp[:, position] if position is not None else logp.mean(-1)
        return value if self.target.measure == "logprob" else value.exp()

    def score_embeds(self, prompt: Tensor) -> Tensor:
        """The target quantity ``[B]`` for prompt embeddings ``[B, P, d]`` (differentiable)."""
        value = self._prob(prompt, self.target.ids, self.target.position)
        if self.target.alternative is not None:
            value = value - self._prob(prompt, self.target.alternative)
        return value

    @torch.no_grad()
    def score(self, ids: Tensor, batch: int = 8) -> Tensor:
        """The target quantity ``[B]`` for prompt ids ``[B, P]``, in batches (no gradients)."""
        out = [self.score_embeds(self.embed(ids[i : i + batch])) for i in range(0, ids.shape[0], batch)]
        return torch.cat(out).float().cpu()

    def replaced(self, masks: Tensor) -> Tensor:
        """Prompt ids ``[B, P]`` with the context tokens where ``masks [B, n_context]`` is True replaced."""
        ids = self.ids.expand(masks.shape[0], -1).clone()
        ctx = ids[:, self.ctx_start : self.ctx_end]
        ctx[masks.to(ctx.device)] = self.baseline_id
        return ids

    def top_tokens_kept_in_top_k(self, ids: Tensor, k: int) -> Tensor:
        """Bool ``[B]``: every target token is among the model's top-``k`` predictions (ReAGent's test)."""
        ans = self.target.ids if self.target.position is None else [self.target.ids[self.target.position]]
        with torch.no_grad():
            x = torch.cat([ids, torch.tensor(self.target.ids[:-1], device=ids.device).expand(ids.shape[0], -1)], 1)
            logits = self.model(input_ids=x, use_cache=False, logits_to_keep=len(self.target.ids)).logits
        if self.target.position is not None:
            logits = logits[:, self.target.position : self.target.position + 1]
        top = logits.topk(k, -1).indices  # [B, m, k]
        hit = (top == torch.tensor(ans, device=top.device)[None, :, None]).any(-1)
        return hit.all(-1).cpu()
