from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.errors import ParameterError
from tokensieve.vlm.base import Inputs, VlmMethod, cosine


def coverage_select(cover: Tensor, weight: Tensor, k: int) -> Tensor:
    """Greedy maximum coverage (facility location): f(S) = sum_t weight[t] * max_{j in S} cover[t, j].
    cover [B, P, N] (targets x candidates, >= 0), weight [B, P] -> [B, k] in the order chosen. f is monotone
    submodular, so the greedy set is within (1 - 1/e) of the best one."""
    b, p, n = cover.shape
    best = torch.zeros(b, p, dtype=cover.dtype, device=cover.device)  # each target's coverage so far
    taken = torch.zeros(b, n, dtype=torch.bool, device=cover.device)
    chosen = torch.empty(b, k, dtype=torch.long, device=cover.device)
    for t in range(k):
        gain = ((cover - best[..., None]).clamp(min=0) * weight[..., None]).sum(1)  # [B, N] marginal gains
        pick = gain.masked_fill(taken, float("-inf")).argmax(-1)
        chosen[:, t] = pick
        taken[torch.arange(b), pick] = True
        best = torch.maximum(best, cover[torch.arange(b), :, pick])
    return chosen


@dataclass
class MMTok(VlmMethod):
    """Before the LLM, keep the image tokens that best cover both the text tokens and all the image tokens:
    greedy maximisation of alpha * mean_text max_kept s(t, j) + (1 - alpha) * mean_image max_kept s(i, j).
    Choice: s = (1 + cosine) / 2 (non-negative, so coverage is submodular), text in the LLM's input space."""

    id = "mmtok"
    paper = "MMTok: Multimodal Coverage Maximization for Efficient Inference of VLMs (Dong et al., ICLR 2026)"
    rule = "greedy max coverage of the text tokens (weight alpha) and of every image token by the kept ones"

    alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ParameterError(f"alpha={self.alpha} must lie in [0, 1] (1: text coverage only, 0: image only)")

    def before_llm(self, inputs: Inputs) -> Tensor | None:
        img, txt = F.normalize(inputs.image.float(), dim=-1), F.normalize(inputs.text.float(), dim=-1)
        n = img.shape[1]
        text_cover = (1 + txt @ img.transpose(1, 2)) / 2  # [B, M, N]
        image_cover = (1 + cosine(inputs.image)) / 2  # [B, N, N]
        valid = inputs.text_valid.float()
        w_text = self.alpha * valid / valid.sum(-1, keepdim=True).clamp(min=1)
        w_image = torch.full(image_cover.shape[:2], (1 - self.alpha) / n, device=img.device)
        cover = torch.cat([text_cover, image_cover], 1)
        return coverage_select(cover, torch.cat([w_text, w_image], 1), self.n_keep(n))
