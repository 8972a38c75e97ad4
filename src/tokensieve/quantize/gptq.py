"""GPTQ and round-to-nearest for one linear layer: tokensieve's own small, readable reference.

Why write it here instead of installing one: the maintained GPTQ libraries either need a newer torch,
pin an older transformers, or ship CUDA-only builds, and none of them accepts per-token weights in the
Hessian, which is the point of RSQ (METHODS.md section 8). So this module implements GPTQ (Frantar et
al., 2023) from the paper's algorithm, on CPU, in float32:

- the layer Hessian ``H = sum_t w_t x_t x_t^T`` is accumulated from calibration inputs (``Hessian``);
  the token weights ``w`` (mean 1) enter as ``sqrt(w_t) * x_t``, so all-ones weights are plain GPTQ,
  bit for bit (a multiplication by exactly 1.0 changes nothing);
- damping adds 1% of the mean diagonal; the inverse comes from a Cholesky factorisation, and its upper
  Cholesky factor drives the column-by-column error feedback, in lazy blocks of 128 columns;
- the quantizer is asymmetric min-max per output channel, or per group of ``group`` input columns,
  at 2, 3, 4 or 8 bits, with an optional clipping search (shrink the range while the error falls).

Results are integer codes with per-group scale and zero point (``Quantized``); ``dequantize`` rebuilds
the float weight exactly as the quantizer produced it (the codes round-trip).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from tokensieve.errors import ParameterError

BITS = (2, 3, 4, 8)
BLOCK = 128  # lazy-batch width of GPTQ's column updates


class Grid(Protocol):
    """A storage format's own code grid (``quantize.export.grids``): GPTQ rounds on it, so a file can hold
    the codes exactly. ``for_columns`` picks the grid a matrix of that width gets (or raises
    ``ParameterError``); ``params`` fixes a group's grid from its weights; ``quant`` rounds columns
    ``j0..`` of that group onto it and returns (codes, dequantized values); ``result`` assembles a layer."""

    bits: int
    group: int

    def for_columns(self, columns: int) -> Grid: ...
    def params(self, w: Tensor) -> tuple[Tensor, ...]: ...
    def quant(self, w: Tensor, p: tuple[Tensor, ...], j0: int) -> tuple[Tensor, Tensor]: ...
    def result(self, codes: Tensor, params: list[tuple[Tensor, ...]], group: int) -> Quantized: ...


@dataclass(frozen=True)
class QuantSpec:
    """How weights are quantized: ``bits``, ``group`` input columns per scale (0 = one per output row),
    and whether to search a clipping ratio per group (``clip``: grid of ``clip_grid`` shrink steps)."""

    bits: int = 4
    group: int = 0
    clip: bool = False
    clip_grid: int = 20
    clip_min: float = 0.5  # smallest range shrink the search tries
    clip_norm: float = 2.4  # the error norm the search minimises (GPTQ's choice)
    grid: Grid | None = None  # a file format's grid instead of min-max (bits and group then come from it)

    def __post_init__(self) -> None:
        if self.grid is None and self.bits not in BITS:
            raise ParameterError(f"--bits {self.bits} is not supported: use one of {', '.join(map(str, BITS))}")
        if self.grid is not None and self.clip:
            raise ParameterError("--clip searches a min-max range: a file format's grid sets its own scales")
        if self.group < 0:
            raise ParameterError(f"--group {self.group} must be 0 (per output channel) or a positive column count")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def group_of(self, columns: int) -> int:
        if self.grid is not None:
            return self.grid.for_columns(columns).group
        g = self.group or columns
        if columns % g:
            raise ParameterError(f"group {self.group} does not divide {columns} input columns: pick a divisor")
        return g


def minmax_params(w: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Per-row scale and zero point ``[rows, 1]`` for ``w [rows, cols]`` (range always includes 0)."""
    lo = w.min(dim=1, keepdim=True).values.clamp(max=0)
    hi = w.max(dim=1, keepdim=True).values.clamp(min=0)
    if spec.clip:
        lo, hi = _clip_search(w, lo, hi, spec)
    return _scale_zero(lo, hi, spec.maxq)


def _scale_zero(lo: Tensor, hi: Tensor, maxq: int) -> tuple[Tensor, Tensor]:
    flat = hi == lo  # an all-zero row: any positive scale reproduces it
    lo, hi = torch.where(flat, lo - 1, lo), torch.where(flat, hi + 1, hi)
    scale = (hi - lo) / maxq
    return scale, torch.round(-lo / scale)


def _clip_search(w: Tensor, lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Shrink each row's range by the factor (from 1 down to ``clip_min``) that quantizes it best."""
    best = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for i in range(spec.clip_grid):
        p = 1 - i * (1 - spec.clip_min) / max(1, spec.clip_grid - 1)
        scale, zero = _scale_zero(p * lo, p * hi, spec.maxq)
        err = (fake_quant(w, scale, zero, spec.maxq) - w).abs().pow(spec.clip_norm).sum(1, keepdim=True)
        better = err < best
        best = torch.where(better, err, best)
        best_lo, best_hi = torch.where(better, p * lo, best_lo), torch.where(better, p * hi, best_hi)
    return best_lo, best_hi


def codes_of(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def fake_quant(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    return scale * (codes_of(w, scale, zero, maxq) - zero)


@dataclass
class Quantized:
    """One layer's result: ``codes [rows, cols]`` (uint8), ``scale`` and ``zero`` ``[rows, cols / group]``:
    ``w = scale * (codes - zero)``. A file format's grid may instead set ``offset`` (``w = scale * codes +
    offset``, ggml's ``_1`` types), name its ``type`` and keep what it packs in ``extra`` (per-row tensors)."""

    codes: Tensor
    scale: Tensor
    zero: Tensor
    bits: int
    group: int
    offset: Tensor | None = None
    type: str = ""
    extra: dict[str, Tensor] = field(default_factory=dict)

    def dequantize(self) -> Tensor:
        scale = self.scale.repeat_interleave(self.group, dim=1)
        if self.offset is not None:
            return scale * self.codes.float() + self.offset.repeat_interleave(self.group, dim=1)
        zero = self.zero.repeat_interleave(self.group, dim=1)
        return scale * (self.codes.float() - zero)

    def rows(self, start: int, stop: int) -> Quantized:
        """Output rows ``start:stop`` (GPTQ quantizes linears that share an input as one stacked matrix)."""
        cut: Any = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return replace(self, codes=cut(self.codes), scale=cut(self.scale), zero=cut(self.zero),
                       offset=cut(self.offset), extra={k: cut(v) for k, v in self.extra.items()})  # fmt: skip


class Hessian:
    """``H = sum_t w_t x_t x_t^T`` over the calibration tokens a linear layer sees."""

    def __init__(self, columns: int) -> None:
        self.h = torch.zeros(columns, columns, dtype=torch.float32)
        self.tokens = 0

    def add(self, x: Tensor, weights: Tensor | None = None) -> None:
        """``x [..., cols]``; ``weights`` broadcastable to ``x.shape[:-1]`` (None = every token 1)."""
        x = x.reshape(-1, x.shape[-1]).float()
        if weights is not None:
            x = x * weights.reshape(-1, 1).float().sqrt()
        self.h.addmm_(x.T, x)
        self.tokens += x.shape[0]


def rtn(w: Tensor, spec: QuantSpec) -> Quantized:
    """Round to nearest: each group's min-max grid, no error feedback (the baseline)."""
    cols = w.shape[1]
    g = spec.group_of(cols)
    w = w.float()
    if spec.grid is not None:
        grid, params = spec.grid.for_columns(cols), []
        codes = torch.empty_like(w)
        for c in range(0, cols, g):
            params.append(grid.params(w[:, c : c + g]))
            codes[:, c : c + g] = grid.quant(w[:, c : c + g], params[-1], 0)[0]
        return grid.result(codes, params, g)
    codes, scales, zeros = torch.empty_like(w), [], []
    for c in range(0, cols, g):
        scale, zero = minmax_params(w[:, c : c + g], spec)
        codes[:, c : c + g] = codes_of(w[:, c : c + g], scale, zero, spec.maxq)
        scales.append(scale)
        zeros.append(zero)
    return Quantized(codes.to(torch.uint8), torch.cat(scales, 1), torch.cat(zeros, 1), spec.bits, g)


def gptq(w: Tensor, hessian: Tensor, spec: QuantSpec, damp: float = 0.01, block: int = BLOCK) -> Quantized:
    """Quantize ``w [rows, cols]`` column by column, feeding each column's error forward through ``H^-1``."""
    rows, cols = w.shape
    g = spec.group_of(cols)
    if g < cols and block % g and g % block:
        raise ParameterError(f"group {g} must divide {block} or be a multiple of it (GPTQ's lazy block)")
    block = max(block, g) if g < cols else block
    w = w.float().clone()
    h = hessian.clone()
    dead = torch.diag(h) == 0  # inputs never seen: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(damp * torch.diag(h).mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    codes = torch.empty_like(w)
    grid = spec.grid.for_columns(cols) if spec.grid is not None else _MinMax(spec, g)
    params: list[tuple[Tensor, ...]] = []
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        w1, err1, hinv1 = w[:, b0:b1].clone(), torch.zeros(rows, b1 - b0), hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:  # a new group: its grid comes from the weights as updated so far
                params.append(grid.params(torch.cat([w1[:, i:], w[:, b1:]], 1)[:, :g]))
            q, deq = grid.quant(w1[:, i : i + 1], params[-1], col % g)
            codes[:, col : col + 1] = q
            err = (w1[:, i : i + 1] - deq) / hinv1[i, i]
            w1[:, i:] -= err @ hinv1[i : i + 1, i:]
            err1[:, i : i + 1] = err
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return grid.result(codes, params, g)


@dataclass(frozen=True)
class _MinMax:
    """The research grid: asymmetric min-max per group at ``spec.bits`` (fp32 scales, integer zero points)."""

    spec: QuantSpec
    group: int

    @property
    def bits(self) -> int:
        return self.spec.bits

    def for_columns(self, columns: int) -> Grid:
        return self

    def params(self, w: Tensor) -> tuple[Tensor, ...]:
        return minmax_params(w, self.spec)

    def quant(self, w: Tensor, p: tuple[Tensor, ...], j0: int) -> tuple[Tensor, Tensor]:
        scale, zero = p
        q = codes_of(w, scale, zero, self.spec.maxq)
        return q, scale * (q - zero)

    def result(self, codes: Tensor, params: list[tuple[Tensor, ...]], group: int) -> Quantized:
        scale, zero = (torch.cat([p[k] for p in params], 1) for k in (0, 1))
        return Quantized(codes.to(torch.uint8), scale, zero, self.spec.bits, group)


def layer_loss(w: Tensor, w_hat: Tensor, hessian: Tensor) -> float:
    """GPTQ's objective ``tr((W - W^) H (W - W^)^T)`` = sum_t w_t ||(W - W^) x_t||^2."""
    d = (w - w_hat).double()
    return float(torch.einsum("ij,jk,ik->", d, hessian.double(), d))
