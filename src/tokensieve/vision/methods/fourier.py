from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.tokens import Tokens


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II basis [n, n]: X = C @ x (scipy's ``dct(x, norm="ortho")``)."""
    i = torch.arange(n, dtype=dtype)
    c = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c


def dct_lowpass(grid: Tensor, out: tuple[int, int]) -> Tensor:
    """[B, h, w, D] -> [B, h', w', D]: 2-D DCT, keep the h' x w' lowest frequencies, inverse DCT at the small
    size, scaled by sqrt(h'w' / hw) so a constant grid stays the same constant."""
    h, w = grid.shape[1:3]
    ch, cw = dct_matrix(h).to(grid.dtype), dct_matrix(w).to(grid.dtype)
    coef = torch.einsum("uh,vw,bhwd->buvd", ch, cw, grid)[:, : out[0], : out[1]]
    ih, iw = dct_matrix(out[0]).to(grid.dtype), dct_matrix(out[1]).to(grid.dtype)
    small = torch.einsum("uh,vw,buvd->bhwd", ih, iw, coef)
    return small * math.sqrt(out[0] * out[1] / (h * w))


@dataclass
class Fourier(VisionMethod):
    """Replace the patch grid at the cut by its low-frequency 2-D DCT content: h' x w' tokens (aspect kept,
    h'w' close to keep * N), each a low-pass sample of a region. Unmerging maps each patch to the token of
    its region. Choice: the tokens sit inside the ViT (the paper compresses the encoder's output for the LLM)."""

    id = "fourier"
    paper = "Fourier-VLM: Compressing Vision Tokens in the Frequency Domain (2025)"
    rule = "2-D DCT of the patch grid, keep the h'xw' low frequencies, inverse DCT at h'xw'"

    def shape(self, grid: tuple[int, int], n: int) -> tuple[int, int]:
        h = max(1, min(grid[0], round(grid[0] * math.sqrt(n / (grid[0] * grid[1])))))
        return h, max(1, min(grid[1], round(n / h)))

    def reduce(self, x: Tensor, st: Tokens, n: int) -> Tensor:
        ns, (b, _, d) = st.n_special, x.shape
        (gh, gw), (oh, ow) = st.grid, self.shape(st.grid, n)
        small = dct_lowpass(x[:, ns:].reshape(b, gh, gw, d), (oh, ow)).reshape(b, oh * ow, d)
        ii = torch.arange(gh, device=x.device) * oh // gh
        jj = torch.arange(gw, device=x.device) * ow // gw
        cell = ns + (ii[:, None] * ow + jj[None, :]).reshape(-1)
        old2new = torch.cat([torch.arange(ns, device=x.device), cell]).expand(b, -1)
        st.assign = old2new.gather(1, st.assign)
        st.sizes = None
        return torch.cat([x[:, :ns], small], 1)
