"""T-SHIRT: select samples by difficulty over their informative tokens, robust over perturbed embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tokensieve.train.base import Rule, TokenBatch, top_fraction


def informative_tokens(logp: Tensor, free_logp: Tensor, mask: Tensor, q: float) -> Tensor:
    """The top ``q`` of each sample's response tokens by how much the prompt raises their log p: tokens a
    model can predict without the prompt (format, boilerplate) say nothing about the sample's difficulty."""
    return top_fraction((logp - free_logp).detach(), mask, q, per_row=True)


def tshirt_scores(perturbed_logp: Tensor, free_logp: Tensor, informative: Tensor) -> Tensor:
    """Per-sample IFD over informative tokens, ``L(y | x) / L(y)``, averaged over K perturbed-embedding
    forwards ``[K, B, T]``: a sample stays hard (high ratio) across the neighbourhood, not by one fluke."""
    m = informative.float()
    n = m.sum(-1).clamp_min(1.0)
    cond = -(perturbed_logp * m).sum(-1) / n  # [K, B]
    free = (-(free_logp * m).sum(-1) / n).clamp_min(1e-6)  # [B]
    return (cond / free).mean(0)


def select_samples(scores: Tensor, keep: float) -> Tensor:
    """Bool ``[B]``: the top ``keep`` fraction of samples by score."""
    return top_fraction(scores.view(1, -1), torch.ones_like(scores, dtype=torch.bool).view(1, -1), keep, True)[0]


@dataclass
class TShirt(Rule):
    """The paper scores every sample of the dataset once, with the model before training, and trains on the
    top ``keep`` of the whole dataset: ``tokensieve.train.offline`` does that (``sample_scores`` then
    ``keep_top``), and the training benchmark's ``tshirt`` arm uses it. ``weights`` is an online variant, used
    when the rule is passed to the loop or the Trainer: it keeps the top ``keep`` of each *batch*, scored by
    the model as it trains. Deviations from the paper in both: IFD is computed on the top ``q`` of tokens by
    prompt reliance ``log p(t|x) - log p(t)`` of one model, and robustness is the mean over ``k`` Gaussian
    perturbations of the input embeddings (``sigma`` x RMS), not the paper's own neighbourhood settings."""

    id: ClassVar[str] = "tshirt"
    paper: ClassVar[str] = "T-SHIRT: Token-Selective Hierarchical Data Selection for Instruction Tuning (2025)"
    rule: ClassVar[str] = "keep the top `keep` samples by IFD on informative tokens, mean over perturbed embeddings"
    needs: ClassVar[frozenset[str]] = frozenset({"no_prompt", "perturbed"})

    keep: float = 0.5  # fraction of samples of each batch trained on
    q: float = 0.5  # fraction of a sample's tokens counted as informative
    k: int = 2  # perturbed forwards
    sigma: float = 0.05  # noise std relative to each embedding's RMS

    def sample_scores(self, b: TokenBatch) -> Tensor:
        """Per-sample robust IFD ``[B]`` (higher = harder, kept first)."""
        self.check(b)
        info = informative_tokens(b.logp, b.free_logp, b.mask, self.q)
        return tshirt_scores(b.perturbed_logp, b.free_logp, info)

    def weights(self, b: TokenBatch) -> Tensor:
        chosen = select_samples(self.sample_scores(b), self.keep)
        return (b.mask & chosen[:, None]).float()
