from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.tokens import Tokens


@dataclass
class Downsample(VisionMethod):
    """Baseline: feed a smaller image (bilinear, antialiased) so the ViT sees about ``keep`` of the patch
    tokens from the first layer on, position embeddings interpolated. A published benchmark found this
    beats many pruning methods at equal token count. Unmerging maps each full-resolution patch to the
    small-grid token covering it."""

    id = "downsample"
    paper = "baseline (Wen et al., 2025: token pruning vs. plain downsampling)"
    rule = "resize the input to sqrt(keep) of its side, rounded to whole patches"

    def side(self, n: int) -> int:
        return max(1, round(n * math.sqrt(self.keep)))

    def resize(self, pixels: Tensor, patch: int) -> Tensor:
        if self.keep >= 1.0:
            return pixels
        gh, gw = pixels.shape[-2] // patch, pixels.shape[-1] // patch
        size = (self.side(gh) * patch, self.side(gw) * patch)
        return F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)

    def run_patches(self, grid: tuple[int, int], patch: int) -> int:
        return self.side(grid[0]) * self.side(grid[1]) if self.keep < 1.0 else grid[0] * grid[1]

    def start(self, st: Tokens) -> None:
        if self.keep >= 1.0:
            return
        (gh, gw), ns = st.grid, st.n_special
        oh, ow = self.side(gh), self.side(gw)
        ii, jj = torch.arange(gh) * oh // gh, torch.arange(gw) * ow // gw
        cell = ns + (ii[:, None] * ow + jj[None, :]).reshape(-1)
        old2new = torch.cat([torch.arange(ns), cell]).to(st.assign.device)
        st.assign = old2new.expand(st.assign.shape[0], -1).clone()

    def target(self, layer: int, n_layers: int, st: Tokens, n_now: int) -> int | None:
        return None
