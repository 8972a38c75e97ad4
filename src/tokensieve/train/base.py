"""The base of every training rule: per-token log-probs (and what else it needs) in, a scalar loss out.

A rule is a pure function of tensors ``[B, T]`` aligned with next-token targets: the current model's
log p (with gradient), the valid mask, and, when the rule asks for them in ``needs``, a frozen model's
log p, the response's attention to the prompt, log p without the prompt, or log p under perturbed
embeddings. ``loss.py`` runs the forwards a rule needs, so rules never touch a model.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tokensieve.errors import TokenSieveError
from tokensieve.registry import Registered

NEEDS = {"reference", "attention", "no_prompt", "perturbed"}


class TrainRuleError(TokenSieveError, ValueError):
    pass


@dataclass
class TokenBatch:
    logp: Tensor  # [B, T] log p(target) under the model being trained (carries the gradient)
    mask: Tensor  # [B, T] bool: a response token that is trained on
    ref_logp: Tensor | None = None  # [B, T] frozen reference / history model (no gradient)
    attn: Tensor | None = None  # [B, T] attention mass the position puts on the prompt (no gradient)
    free_logp: Tensor | None = None  # [B, T] log p with the prompt removed (no gradient)
    perturbed_logp: Tensor | None = None  # [K, B, T] log p under K perturbed input embeddings (no gradient)
    noise: Tensor | None = None  # [B, T] bool: injected-noise ground truth, only for measuring selection


def weighted_nll(logp: Tensor, weights: Tensor) -> Tensor:
    """sum_t w_t * (-log p_t) / sum_t w_t: the mean loss over the tokens a rule keeps."""
    return -(weights * logp).sum() / weights.sum().clamp_min(1e-8)


def minmax(x: Tensor, mask: Tensor) -> Tensor:
    """Per-row min-max normalisation to [0, 1] over the masked entries (0 elsewhere)."""
    big = torch.finfo(x.dtype).max
    lo = x.masked_fill(~mask, big).amin(-1, keepdim=True)
    hi = x.masked_fill(~mask, -big).amax(-1, keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).masked_fill(~mask, 0.0)


def top_fraction(score: Tensor, mask: Tensor, fraction: float, per_row: bool) -> Tensor:
    """Bool mask of the top ``fraction`` of masked entries by score (per row, or over the whole batch)."""
    if not 0.0 < fraction <= 1.0:
        raise TrainRuleError(f"keep fraction {fraction!r} is outside (0, 1]: pass e.g. 0.6 to keep 60% of tokens")
    score = score.masked_fill(~mask, float("-inf"))
    flat = score if per_row else score.reshape(1, -1)
    n = mask.sum(-1, keepdim=True) if per_row else mask.sum().view(1, 1)
    k = (n.float() * fraction).ceil().long().clamp_max(flat.shape[-1])
    order = flat.argsort(-1, descending=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(flat.shape[-1]).expand_as(order).contiguous())
    return (ranks < k).view_as(mask) & mask


@dataclass
class Rule(Registered, ABC):
    kind: ClassVar[str] = "token-weighted training"  # `tokensieve methods` lists it; `tokensieve train` runs it
    needs: ClassVar[frozenset[str]] = frozenset()

    def weights(self, b: TokenBatch) -> Tensor:
        """Detached token weights ``[B, T]`` (0 = dropped); the loss is their weighted mean NLL."""
        raise NotImplementedError

    def loss(self, b: TokenBatch) -> Tensor:
        return weighted_nll(b.logp, self.weights(b).detach())

    def check(self, b: TokenBatch) -> None:
        missing = [n for n, v in (("reference", b.ref_logp), ("attention", b.attn), ("no_prompt", b.free_logp),
                                  ("perturbed", b.perturbed_logp)) if n in self.needs and v is None]
        if missing:
            raise TrainRuleError(f"rule {self.id!r} needs {', '.join(missing)} in its TokenBatch: compute the loss "
                                 "with tokensieve.train.token_loss(rule, model, batch, reference=...)")
