"""ggml's code grids, as GPTQ's quantizer: every weight lands on a value the target block type can store.

Each grid reproduces gguf-py's dequantization formula operation for operation in float32 (scales are
rounded to fp16 *before* the codes are chosen, so GPTQ's error feedback sees the stored values), which
is what makes ``gguf.quants.dequantize`` of a written file equal ``Quantized.dequantize`` bit for bit.

- ``Q4_0`` / ``Q5_0`` / ``Q8_0``: blocks of 32 input columns, one fp16 scale ``d``, ``w = d * (q - z)``
  with ``z`` = 8 / 16 / 128 (Q8_0's int8 stored as ``q - 128``); the signed extreme maps to ``-z``.
- ``Q4_1`` / ``Q5_1``: blocks of 32, fp16 ``d`` and ``m``, ``w = d * q + m`` (min-max).
- ``Q3_K``: super-blocks of 256 columns, 16 sub-blocks of 16, ``w = (d * s) * (q - 4)``, ``d`` fp16,
  ``s`` a 6-bit signed sub-scale in [-32, 31], ``q`` in [0, 7]. A matrix whose width is not a multiple
  of 256 cannot hold Q3_K: it gets the ``fallback`` block-32 type (llama.cpp falls back too, to IQ4_NL,
  the same 4.5 bits per weight as Q4_0).
- ``Q4_K``: super-blocks of 256, 8 sub-blocks of 32, ``w = (d * sc) * q - (dmin * m)``, fp16 ``d`` and
  ``dmin``, 6-bit ``sc`` and ``m``, ``q`` in [0, 15]; narrower matrices get Q5_0, as in llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.errors import ParameterError
from tokensieve.quantize.gptq import Grid, Quantized

QK = 32  # block-32 types
QK_K = 256  # K-quant super-block
SUB = 16  # Q3_K sub-block


def fp16(t: Tensor) -> Tensor:
    return t.half().float()


def _safe(d: Tensor) -> Tensor:
    return torch.where(d == 0, torch.ones_like(d), d)


@dataclass(frozen=True)
class Block32:
    """One of ggml's block-32 types; ``zero`` is None for the min-max (``_1``) types."""

    type: str
    bits: int
    zero: int | None
    group: int = QK

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def for_columns(self, columns: int) -> Grid:
        if columns % QK:
            raise ParameterError(f"{self.type} stores blocks of {QK} input columns; {columns} is not a multiple")
        return self

    def params(self, w: Tensor) -> tuple[Tensor, ...]:
        if self.zero is None:
            lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
            return fp16((hi - lo) / self.maxq), fp16(lo)
        if self.type == "Q8_0":
            return (fp16(w.abs().max(1, keepdim=True).values / 127),)
        # ggml's choice: the signed extreme maps to the lowest code, so the grid reaches it exactly
        extreme = w.gather(1, w.abs().argmax(1, keepdim=True))
        return (fp16(extreme / -self.zero),)

    def quant(self, w: Tensor, p: tuple[Tensor, ...], j0: int) -> tuple[Tensor, Tensor]:
        d = p[0]
        if self.zero is None:
            q = torch.clamp(torch.round((w - p[1]) / _safe(d)), 0, self.maxq)
            return q, d * q + p[1]
        lo, hi = (1, 255) if self.type == "Q8_0" else (0, self.maxq)
        q = torch.clamp(torch.round(w / _safe(d)) + self.zero, lo, hi)
        return q, d * (q - self.zero)

    def result(self, codes: Tensor, params: list[tuple[Tensor, ...]], group: int) -> Quantized:
        d = torch.cat([p[0] for p in params], 1)
        if self.zero is None:
            m = torch.cat([p[1] for p in params], 1)
            return Quantized(codes.to(torch.uint8), d, torch.zeros_like(d), self.bits, QK, m, self.type)
        return Quantized(codes.to(torch.uint8), d, torch.full_like(d, self.zero), self.bits, QK, None, self.type)


@dataclass(frozen=True)
class Q3K:
    """``Q3_K``: GPTQ's group is the 256-column super-block (``d`` and the 16 sub-scales are fixed from the
    weights as updated when it starts); narrower matrices get ``fallback``."""

    fallback: Block32
    type: str = "Q3_K"
    bits: int = 3
    group: int = QK_K

    def for_columns(self, columns: int) -> Grid:
        return self if columns % QK_K == 0 else self.fallback.for_columns(columns)

    def params(self, w: Tensor) -> tuple[Tensor, ...]:
        sub = w.reshape(w.shape[0], -1, SUB)
        extreme = sub.gather(2, sub.abs().argmax(2, keepdim=True)).squeeze(2)
        ideal = extreme / -4  # each sub-block's own symmetric scale (its extreme on code 0)
        big = ideal.gather(1, ideal.abs().argmax(1, keepdim=True))
        d = fp16(big / -32)
        s = torch.clamp(torch.round(ideal / _safe(d)), -32, 31)
        return d, s, d * s

    def quant(self, w: Tensor, p: tuple[Tensor, ...], j0: int) -> tuple[Tensor, Tensor]:
        dl = p[2][:, (j0 + torch.arange(w.shape[1])) // SUB]
        q = torch.clamp(torch.round(w / _safe(dl)) + 4, 0, 7)
        return q, dl * (q - 4)

    def result(self, codes: Tensor, params: list[tuple[Tensor, ...]], group: int) -> Quantized:
        d, s, dl = (torch.cat([p[k] for p in params], 1) for k in range(3))
        extra = {"d": d, "s": s}
        return Quantized(codes.to(torch.uint8), dl, torch.full_like(dl, 4), 3, SUB, None, self.type, extra)


@dataclass(frozen=True)
class Q4K:
    """``Q4_K``: super-blocks of 256 columns, 8 sub-blocks of 32, ``w = (d * sc) * q - (dmin * m)`` with
    fp16 ``d`` / ``dmin``, 6-bit ``sc`` / ``m`` in [0, 63], ``q`` in [0, 15]; narrower matrices get ``fallback``
    (llama.cpp's: Q5_0)."""

    fallback: Block32
    type: str = "Q4_K"
    bits: int = 4
    group: int = QK_K

    def for_columns(self, columns: int) -> Grid:
        return self if columns % QK_K == 0 else self.fallback.for_columns(columns)

    def params(self, w: Tensor) -> tuple[Tensor, ...]:
        sub = w.reshape(w.shape[0], -1, QK)
        lo = sub.min(2).values.clamp(max=0)  # the stored min is subtracted, so it is never above 0
        hi = sub.max(2).values
        ideal = (hi - lo) / 15
        d = fp16(ideal.max(1, keepdim=True).values / 63)
        dmin = fp16((-lo).max(1, keepdim=True).values / 63)
        sc = torch.clamp(torch.round(ideal / _safe(d)), 0, 63)
        m = torch.clamp(torch.round(-lo / _safe(dmin)), 0, 63)
        return d, dmin, sc, m, d * sc, dmin * m

    def quant(self, w: Tensor, p: tuple[Tensor, ...], j0: int) -> tuple[Tensor, Tensor]:
        idx = (j0 + torch.arange(w.shape[1])) // QK
        dl, ml = p[4][:, idx], p[5][:, idx]
        q = torch.clamp(torch.round((w + ml) / _safe(dl)), 0, 15)
        return q, dl * q - ml

    def result(self, codes: Tensor, params: list[tuple[Tensor, ...]], group: int) -> Quantized:
        d, dmin, sc, m, dl, ml = (torch.cat([p[k] for p in params], 1) for k in range(6))
        extra = {"d": d, "dmin": dmin, "sc": sc, "m": m}
        return Quantized(codes.to(torch.uint8), dl, torch.zeros_like(dl), 4, QK, -ml, self.type, extra)


GRIDS: dict[str, Grid] = {
    "Q4_0": Block32("Q4_0", 4, 8),
    "Q4_1": Block32("Q4_1", 4, None),
    "Q5_0": Block32("Q5_0", 5, 16),
    "Q5_1": Block32("Q5_1", 5, None),
    "Q8_0": Block32("Q8_0", 8, 128),
    "Q3_K": Q3K(Block32("Q4_0", 4, 8)),
    "Q4_K": Q4K(Block32("Q5_0", 5, 16)),
}


def grid_of(type_name: str) -> Grid:
    if type_name not in GRIDS:
        raise ParameterError(f"GGUF type {type_name!r} is not supported: use one of {', '.join(GRIDS)}")
    return GRIDS[type_name]
