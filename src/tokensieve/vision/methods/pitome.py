from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.vision.methods.tome import ToMe
from tokensieve.vision.tokens import Tokens


def energy(keys: Tensor, margin: float, alpha: float = 1.0) -> Tensor:
    """PiToMe's energy [B, N]: mean over neighbours of f(cos), f(x) = x above the margin and
    alpha*(exp(x - margin) - 1) below it, so only close neighbours add much energy."""
    k = F.normalize(keys, dim=-1)
    cos = k @ k.transpose(1, 2)
    f = torch.where(cos >= margin, cos, alpha * (torch.exp(cos - margin) - 1))
    return f.mean(-1)


@dataclass
class PiToMe(ToMe):
    """ToMe with a spectrum-preserving choice of who merges: the 2r highest-energy tokens (inside large
    clusters of similar keys) are split alternately into A and B and merged; low-energy (isolated) tokens
    are protected. Choice: the margin falls linearly with depth, 0.9 * (1 - layer / n_layers)."""

    id = "pitome"
    paper = "Accelerating Transformers with Spectrum-Preserving Token Merging (Tran et al., NeurIPS 2024)"
    rule = "energy = mean f(key cosine); top-2r energy tokens alternate into A/B and merge; the rest protected"

    alpha: float = 1.0
    n_layers: int = 12

    def candidates(self, x: Tensor, st: Tokens, r: int) -> tuple[Tensor, Tensor]:
        margin = 0.9 * (1 - st.layer / self.n_layers)
        e = energy(st.keys[:, st.n_special :], margin, self.alpha)
        cand = e.argsort(dim=-1, descending=True, stable=True)[:, : 2 * r]
        return cand[:, ::2], cand[:, 1::2]

    def target(self, layer: int, n_layers: int, st: Tokens, n_now: int) -> int | None:
        self.n_layers = n_layers
        return super().target(layer, n_layers, st, n_now)
