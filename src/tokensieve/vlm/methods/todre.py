from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.errors import InvalidKeepError
from tokensieve.vlm.base import Inputs, VlmMethod, cosine, relevance


def k_center(sim: Tensor, k: int, first: Tensor) -> Tensor:
    """Greedy k-center (farthest point first) on cosine distance 1 - sim: start at ``first`` [B], then
    repeatedly add the token farthest from its nearest chosen one. sim [B, N, N] -> [B, k] in order."""
    b = sim.shape[0]
    rows = torch.arange(b, device=sim.device)
    chosen = torch.empty(b, k, dtype=torch.long, device=sim.device)
    chosen[:, 0] = first
    near = 1 - sim[rows, first]  # [B, N] distance to the nearest chosen token
    near[rows, first] = float("-inf")  # chosen: never picked again (minimum keeps -inf)
    for t in range(1, k):
        pick = near.argmax(-1)
        chosen[:, t] = pick
        near = torch.minimum(near, 1 - sim[rows, pick])
        near[rows, pick] = float("-inf")
    return chosen


@dataclass
class ToDRE(VlmMethod):
    """Two stages. Before the LLM, token diversity: greedy k-center keeps ``keep`` of the image tokens,
    seeded by the token most relevant to the text (best cosine to a prompt token). Inside the LLM, task
    relevance: at layer ``at`` (default: half the depth, where image information has migrated to the text)
    keep ``late_keep`` of the remaining image tokens, ranked by the attention every text token after the
    image pays them at layer ``at`` - 1 (0 drops them all). Choice: k-center (the paper's first version)
    rather than its later max-sum diversification."""

    id = "todre"
    paper = "ToDRE: Visual Token Pruning via Token Diversity and Task Relevance (Li et al., 2025)"
    rule = "k-center diversity before the LLM; at a middle layer keep the image tokens the instruction attends to"
    rows = "text"

    late_keep: float = 0.5
    at: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.late_keep <= 1.0:
            raise InvalidKeepError(f"late_keep={self.late_keep} is outside [0, 1] (the fraction kept at layer `at`)")
        if self.at is not None and self.at < 1:
            raise InvalidKeepError(f"at={self.at}: the second stage reads layer at-1's attention, so at >= 1")

    def before_llm(self, inputs: Inputs) -> Tensor | None:
        rel = relevance(inputs)
        return k_center(cosine(inputs.image), self.n_keep(inputs.image.shape[1]), rel.argmax(-1))

    def late(self, n_layers: int) -> tuple[int, float] | None:
        return (n_layers // 2 if self.at is None else self.at, self.late_keep)
