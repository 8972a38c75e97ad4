from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.errors import ParameterError
from tokensieve.vlm.base import Inputs, VlmMethod, cosine, relevance


def mmr_select(importance: Tensor, sim: Tensor, k: int, lam: float) -> Tensor:
    """Greedy Maximal Marginal Relevance: repeatedly add the token maximising
    lam * imp(i) - (1 - lam) * max_{j chosen} sim(i, j), with imp min-max normalised to [0, 1] per row.
    importance [B, N], sim [B, N, N] -> [B, k] in the order chosen."""
    lo, hi = importance.min(-1, keepdim=True).values, importance.max(-1, keepdim=True).values
    imp = (importance - lo) / (hi - lo + 1e-6)
    b, n = imp.shape
    chosen = torch.empty(b, k, dtype=torch.long, device=imp.device)
    redundancy = torch.full_like(imp, float("-inf"))  # max similarity to the chosen set (none yet)
    taken = torch.zeros(b, n, dtype=torch.bool, device=imp.device)
    for t in range(k):
        gain = lam * imp - (1 - lam) * redundancy.clamp(min=-1.0) if t else imp.clone()
        pick = gain.masked_fill(taken, float("-inf")).argmax(-1)
        chosen[:, t] = pick
        taken[torch.arange(b), pick] = True
        redundancy = torch.maximum(redundancy, sim[torch.arange(b), pick])
    return chosen


@dataclass
class IDPruner(VlmMethod):
    """Before the LLM, keep ``keep`` of the image tokens by MMR over importance and diversity. Choice: the
    importance is relevance to the text (each image token's best cosine to a prompt token, in the LLM's
    input space), since no attention map is read; redundancy is cosine among the image tokens; lam = 0.5."""

    id = "idpruner"
    paper = "IDPruner: Harmonizing Importance and Diversity in Visual Token Pruning for MLLMs (Tan et al., 2026)"
    rule = "greedy MMR: lam * text relevance - (1 - lam) * max cosine to the image tokens already kept"

    lam: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lam <= 1.0:
            raise ParameterError(f"lam={self.lam} must lie in [0, 1] (1: relevance only, 0: diversity only)")

    def before_llm(self, inputs: Inputs) -> Tensor | None:
        n = inputs.image.shape[1]
        return mmr_select(relevance(inputs), cosine(inputs.image), self.n_keep(n), self.lam)
