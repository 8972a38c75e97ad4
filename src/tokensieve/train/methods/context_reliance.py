"""Context reliance (a text analogue of PRIOR): weight a token by how much the prompt raises its probability."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch


def context_reliance_weights(logp: Tensor, free_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """``min(p(t | prompt, prefix) / p(t | prefix), cap)``: tokens the prompt makes likely carry the task;
    tokens equally likely without it (boilerplate, format) are down-weighted. PRIOR uses the image as the
    prompt and a text-only LM as the denominator; here the same model without the prompt is the denominator."""
    return (logp.detach() - free_logp).exp().clamp(max=cap) * mask


@dataclass
class ContextReliance(Rule):
    id: ClassVar[str] = "context_reliance"
    paper: ClassVar[str] = "text analogue of Prioritizing Image-Related Tokens (PRIOR, 2025)"
    rule: ClassVar[str] = "weight = min(p(token | prompt) / p(token | no prompt), cap)"
    needs: ClassVar[frozenset[str]] = frozenset({"no_prompt"})

    cap: float = 5.0

    def weights(self, b: TokenBatch) -> Tensor:
        self.check(b)
        return context_reliance_weights(b.logp, b.free_logp, b.mask, self.cap)
