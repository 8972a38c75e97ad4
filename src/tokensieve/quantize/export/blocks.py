"""Packing ggml's block-32 types (``block_q4_0`` ... ``block_q8_0`` in ggml-common.h) from a layer's codes.

Per 32 weights, in this order: fp16 ``d``; fp16 ``m`` for the ``_1`` types; for the 5-bit types a
little-endian uint32 of each code's fifth bit; then the low nibbles, weight ``i`` in byte ``i`` and weight
``i + 16`` in its high half (Q8_0: 32 int8). The codes and fp16 scales are the ones the grid chose, so
nothing is re-rounded here.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from tokensieve.quantize.export.grids import QK
from tokensieve.quantize.gptq import Quantized


def _half(t: Tensor) -> np.ndarray:
    return t.reshape(-1, 1).numpy().astype(np.float16).view(np.uint8)


def pack_block32(q: Quantized) -> np.ndarray:
    """``[rows, cols / 32 * bytes per block]`` uint8."""
    rows = q.codes.shape[0]
    codes = q.codes.reshape(-1, QK).numpy().astype(np.uint8)
    parts = [_half(q.scale)]
    if q.offset is not None:
        parts.append(_half(q.offset))
    if q.type == "Q8_0":
        parts.append((codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if q.bits == 5:
            high = np.packbits(codes >> 4, axis=-1, bitorder="little")  # 4 bytes: bit i = code i's fifth bit
            parts.append(high)
        low = codes & 0x0F
        parts.append(low[:, :16] | (low[:, 16:] << 4))
    return np.concatenate(parts, axis=1).reshape(rows, -1)
