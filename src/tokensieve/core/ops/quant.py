"""Per-token group quantization with real sub-byte storage, as pure functions.

A token's ``D`` channels are cut into groups of ``group``; each group stores ``bits``-bit codes (packed
``8 // bits`` to a byte, so INT4 and INT2 really take half and a quarter of a byte) plus an fp16 scale and
an fp16 zero point: ``x ~ code * scale + zero`` (asymmetric min/max quantization). The error of every
element is at most ``scale / 2`` plus the fp16 rounding of the scale and zero point.

Outlier-aware scaling (MiKV's balancing, ZipCache's channel-separable quantization): keys carry a few
channels of much larger magnitude, which would set every group's range. Dividing each channel by
``sqrt(max_t |x[t, c]|)`` before quantizing, and multiplying it back after, evens the channels out; the
factors cost one float per channel per head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from tokensieve.errors import BudgetError, ParameterError

BITS = (2, 4, 8)
STORE = torch.float16  # scales and zero points


def check_bits(bits: int, what: str = "bits") -> int:
    if bits not in BITS:
        raise ParameterError(f"{what}={bits} is not a supported width: use one of {', '.join(map(str, BITS))}")
    return bits


def group_size(group: int, dim: int) -> int:
    """``group`` channels per group (0 or anything >= ``dim``: the whole token); it must divide ``dim``."""
    g = dim if group <= 0 or group >= dim else group
    if dim % g:
        raise ParameterError(f"quantization group {group} does not divide the head dimension {dim}: use a divisor")
    return g


def _word(dim: int, bits: int) -> int:
    """Bytes per packing word: 4 when the row allows it (unpacked 4 bytes at a time through an int32 view)."""
    return 4 if dim % (4 * (8 // bits)) == 0 else 1


def pack(codes: Tensor, bits: int) -> Tensor:
    """uint8 codes ``[..., D]`` (each < 2**bits) -> ``[..., D * bits / 8]`` bytes.

    Layout: the row is cut into words of ``w`` bytes holding ``w * 8 / bits`` consecutive codes; code ``i * w + b``
    of a word sits in byte ``b`` at bit ``bits * i``. With ``w = 4`` unpacking is one shift-and-mask of int32
    words per bit position, about 4x faster on CPU than unpacking byte by byte."""
    if bits == 8:
        return codes.to(torch.uint8)
    per = 8 // bits
    w = _word(codes.shape[-1], bits)
    c = codes.to(torch.uint8).unflatten(-1, (-1, per, w))  # [..., words, per, w]
    out = c[..., 0, :].clone()
    for i in range(1, per):
        out |= c[..., i, :] << (bits * i)
    return out.flatten(-2)


def unpack(packed: Tensor, bits: int, dim: int | None = None) -> Tensor:
    """The inverse of ``pack``: ``[..., D * bits / 8]`` bytes -> uint8 codes ``[..., D]``."""
    if bits == 8:
        return packed
    per = 8 // bits
    dim = packed.shape[-1] * per if dim is None else dim
    w = _word(dim, bits)
    mask = (1 << bits) - 1
    if w == 4 and packed.is_contiguous() and packed.storage_offset() % 4 == 0:
        words = packed.view(torch.int32)  # [..., words]
        mask32 = mask * 0x01010101
        parts = [(words >> (bits * i)) & mask32 for i in range(per)]
        return torch.stack(parts, -1).view(torch.uint8).unflatten(-1, (per, 4)).flatten(-3)
    b = packed.unflatten(-1, (-1, w))  # [..., words, w]
    return torch.stack([(b >> (bits * i)) & mask for i in range(per)], -2).flatten(-3)


def channel_factors(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-channel factors ``sqrt(max_t |x[..., t, c]|)`` as ``[..., 1, D]`` over the ``valid [..., n]`` tokens
    (padding must not set them), 1 for an all-zero channel."""
    mag = x.float().abs()
    if valid is not None:
        mag = mag * valid[..., None]
    peak = mag.amax(-2, keepdim=True)
    return torch.where(peak > 0, peak.sqrt(), torch.ones_like(peak))


@dataclass
class QTensor:
    """Quantized tokens ``[..., n, D]``: packed codes, fp16 scale and zero per group, optional channel factors."""

    packed: Tensor  # uint8 [..., n, D * bits / 8]
    scale: Tensor  # fp16 [..., n, D / group]
    zero: Tensor  # fp16 [..., n, D / group]
    channel: Tensor | None  # fp32 [..., 1, D]: x was divided by it before quantizing
    bits: int
    group: int
    dim: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.packed.shape[:-1], self.dim))

    def tensors(self) -> list[Tensor | None]:
        return [self.packed, self.scale, self.zero, self.channel]

    def apply(self, fn: Callable[[Tensor], Tensor]) -> QTensor:
        """The same function on every stored tensor (batch selection, reordering)."""
        return replace(
            self,
            packed=fn(self.packed),
            scale=fn(self.scale),
            zero=fn(self.zero),
            channel=None if self.channel is None else fn(self.channel),
        )

    def dequantize(self, dtype: torch.dtype = torch.float32, out: Tensor | None = None) -> Tensor:
        """Tokens ``[..., n, D]`` in ``dtype``, written into ``out`` when given: the codes are unpacked as bytes,
        converted into ``out`` and scaled and shifted in place (no other full-size temporary)."""
        codes = unpack(self.packed, self.bits, self.dim)
        if out is None:
            out = torch.empty(*self.packed.shape[:-1], self.dim, dtype=dtype, device=self.packed.device)
        groups = (self.dim // self.group, self.group)
        x = out.view(*out.shape[:-1], *groups)
        x.copy_(codes.view(*codes.shape[:-1], *groups))
        x.mul_(self.scale.to(dtype)[..., None]).add_(self.zero.to(dtype)[..., None])
        if self.channel is not None:
            out.mul_(self.channel.to(dtype))
        return out


def quantize(x: Tensor, bits: int, group: int = 32, balance: bool = False, valid: Tensor | None = None) -> QTensor:
    """Quantize tokens ``x [..., n, D]`` per token in groups of ``group`` channels (0: the whole token),
    after dividing each channel by ``channel_factors(x, valid)`` when ``balance`` (outlier-aware)."""
    check_bits(bits)
    d = x.shape[-1]
    g = group_size(group, d)
    xf = x.float()
    channel = channel_factors(xf, valid) if balance and xf.shape[-2] > 0 else None
    if channel is not None:
        xf = xf / channel
    grouped = xf.unflatten(-1, (d // g, g))
    low, high = grouped.amin(-1), grouped.amax(-1)
    levels = (1 << bits) - 1
    scale = ((high - low) / levels).to(STORE)
    zero = low.to(STORE)
    s = torch.where(scale > 0, scale.float(), torch.ones_like(low))  # a constant group: code 0 is exact
    codes = ((grouped - zero.float()[..., None]) / s[..., None]).round_().clamp_(0, levels).to(torch.uint8)
    return QTensor(pack(codes.flatten(-2), bits), scale, zero, channel, bits, g, d)


def error_bound(q: QTensor) -> Tensor:
    """An upper bound ``[..., n, D]`` on ``|x - dequantize(quantize(x))|``: half a step plus fp16 rounding."""
    step = q.scale.float()[..., None].expand(*q.scale.shape, q.group).flatten(-2)
    zero = q.zero.float().abs()[..., None].expand(*q.zero.shape, q.group).flatten(-2)
    levels = (1 << q.bits) - 1
    fp16 = 2.0**-10  # relative rounding of a stored fp16 value (with margin)
    bound = step / 2 + fp16 * (zero + step * levels) + 1e-6
    return bound if q.channel is None else bound * q.channel.float()


def bytes_per_token(dim: int, bits: int | None, group: int = 32, full_bytes: int = 4) -> float:
    """Bytes one head's key (or value) of one token takes: full precision when ``bits`` is None."""
    if bits is None:
        return float(dim * full_bytes)
    g = group_size(group, dim)
    return dim * bits / 8 + (dim // g) * 2 * torch.finfo(STORE).bits / 8


def mixed_byte_fraction(
    keep: float, dim: int, hi_bits: int | None, lo_bits: int | None, group: int = 32, full_bytes: int = 4
) -> float:
    """The fraction of the full cache's bytes a mixed-precision cache holds when ``keep`` of its tokens are at
    ``hi_bits`` (None: full precision) and the rest at ``lo_bits`` (None: evicted), before anything is appended.

    Bytes per head and token, for head dim D: full precision ``full_bytes`` x D; INT-b codes D*b/8 plus 4 bytes
    per group (fp16 scale + zero). For SmolLM2 (D=64, group 32): INT8 72, INT4 40, INT2 24 bytes against 256 in
    fp32, so keep=f holds f + (1-f) x 24/256 of the full cache (0.32 at f=0.25)."""
    full = bytes_per_token(dim, None, full_bytes=full_bytes)
    hi = bytes_per_token(dim, hi_bits, group, full_bytes)
    lo = 0.0 if lo_bits is None else bytes_per_token(dim, lo_bits, group, full_bytes)
    return (keep * hi + (1 - keep) * lo) / full


def keep_for_byte_fraction(
    fraction: float,
    dim: int,
    hi_bits: int | None,
    lo_bits: int | None,
    group: int = 32,
    full_bytes: int = 4,
    who: str = "mixed precision",
) -> float:
    """The ``keep`` whose held bytes are ``fraction`` of the full cache's (the inverse of ``mixed_byte_fraction``);
    ``who`` names the method in the error when no keep holds that much."""
    lo = mixed_byte_fraction(0.0, dim, hi_bits, lo_bits, group, full_bytes)
    one = mixed_byte_fraction(1.0, dim, hi_bits, lo_bits, group, full_bytes)
    if not lo < fraction <= one:
        raise BudgetError(f"{fraction:.3f} of the bytes is outside what {who} can hold ({lo:.3f}, {one:.3f}]")
    return (fraction - lo) / (one - lo)
