"""Critical tokens (cDPO): contrastive margins from a 'correct' and an 'incorrect' model weight a token-level DPO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch


def critical_margin(pos_logp: Tensor, neg_logp: Tensor) -> Tensor:
    """``log p_pos(t) - log p_neg(t)``: strongly negative where the model tuned on incorrect trajectories
    wants the token far more than the one tuned on correct ones, i.e. the token leads to a wrong answer."""
    return pos_logp - neg_logp


def critical_weights(margin: Tensor, mask: Tensor, tau: float = 1.0) -> Tensor:
    """``sigmoid(-margin / tau)`` in (0, 1): near 1 for critical tokens (large negative margin), 0.5 when
    both models agree, near 0 where the correct model prefers the token."""
    return (-margin.detach() / tau).sigmoid() * mask


def token_dpo_loss(
    chosen: TokenBatch, rejected: TokenBatch, w_chosen: Tensor, w_rejected: Tensor, beta: float
) -> Tensor:
    """DPO with token-weighted log-ratios: ``-log sigmoid(beta * (sum_t w_c (log pi - log ref)(y_c)
    - sum_t w_r (log pi - log ref)(y_r)))``, averaged over pairs. With all weights 1 it is plain DPO."""
    ratio_c = ((chosen.logp - chosen.ref_logp) * w_chosen).sum(-1)
    ratio_r = ((rejected.logp - rejected.ref_logp) * w_rejected).sum(-1)
    return -F.logsigmoid(beta * (ratio_c - ratio_r)).mean()


@dataclass
class Critical(Rule):
    """The rejected trajectory's tokens are weighted by criticality; the chosen one's by 1 (cDPO).

    Deviations from the paper: its contrast models are fine-tuned on the policy's own sampled rollouts,
    split into correct and incorrect ones; here (``pairs.contrast_models`` and the training benchmark) they
    are copies of the starting model fine-tuned briefly on gold solutions and on synthetic incorrect ones
    (one changed digit in the first step and a wrong final answer) of a separate calibration split, so the
    incorrect model learns one kind of error. The weight is ``sigmoid(-margin / tau)`` of the plain
    log-likelihood margin, without the paper's scaling of the two models' terms, and the pairs are (gold,
    synthetic wrong) solutions of the training prompts rather than sampled pairs."""

    id: ClassVar[str] = "critical"
    paper: ClassVar[str] = "Critical Tokens Matter: Token-Level Contrastive Estimation (cDPO, Lin et al., 2024)"
    rule: ClassVar[str] = "w = sigmoid(-(log p_pos - log p_neg)/tau) on rejected tokens, in a token-weighted DPO"
    needs: ClassVar[frozenset[str]] = frozenset({"reference"})
    pairwise: ClassVar[bool] = True

    beta: float = 0.1
    tau: float = 1.0

    def pair_loss(self, chosen: TokenBatch, rejected: TokenBatch, pos_logp: Tensor, neg_logp: Tensor) -> Tensor:
        """``pos_logp`` / ``neg_logp``: the two contrast models' log p on the rejected trajectory."""
        self.check(chosen)
        self.check(rejected)
        w_r = critical_weights(critical_margin(pos_logp, neg_logp), rejected.mask, self.tau)
        return token_dpo_loss(chosen, rejected, chosen.mask.float(), w_r, self.beta)

    def weights(self, b: TokenBatch) -> Tensor:
        # As a per-sequence weight outside DPO: the reference plays the 'correct' model and the current
        # model the 'incorrect' one is not meaningful, so the SFT path refuses instead of guessing.
        raise NotImplementedError
