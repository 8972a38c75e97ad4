"""ssToken: self-modulated loss signal against an earlier checkpoint, mixed with attention to the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch, minmax, top_fraction


def sstoken_score(logp: Tensor, hist_logp: Tensor, attn: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``gamma * minmax(loss_history - loss_current) + (1 - gamma) * minmax(attention to prompt)``, per row.
    The loss term favours tokens the model is learning (history loses more than now); the attention term
    favours tokens that read the prompt, which loss alone cannot see."""
    signal = minmax((logp - hist_logp).detach(), mask)  # = loss_history - loss_current
    return gamma * signal + (1.0 - gamma) * minmax(attn.detach(), mask)


@dataclass
class SSToken(Rule):
    """Deviations from the paper: the history model is the frozen model the caller passes (the starting
    checkpoint in the training benchmark, or re-snapshotted every ``refresh`` steps by the loop and the
    Trainer), where the paper's history model follows training; the attention signal is the response token's
    attention mass on the prompt at the middle layer, averaged over heads. Selection is per response (the top
    ``rho`` of each row): on short responses (~25 tokens here) the few answer tokens compete with the worked
    steps inside their own row, and the final ``Answer: N`` line, once learned, scores low on both signals
    (no loss change; its attention goes to the steps, not the prompt). The benchmark measures the share of
    answer tokens kept (docs/train.md, selection table)."""

    id: ClassVar[str] = "sstoken"
    paper: ClassVar[str] = "ssToken: Self-modulated and Semantic-aware Token Selection (2025)"
    rule: ClassVar[str] = "top rho of response tokens by gamma*mm(L_hist - L_cur) + (1-gamma)*mm(attn to prompt)"
    needs: ClassVar[frozenset[str]] = frozenset({"reference", "attention"})

    gamma: float = 0.5
    rho: float = 0.6

    def weights(self, b: TokenBatch) -> Tensor:
        self.check(b)
        score = sstoken_score(b.logp, b.ref_logp, b.attn, b.mask, self.gamma)
        return top_fraction(score, b.mask, self.rho, per_row=True).float()
