"""Packing the K-quants ``Q3_K`` (ggml's ``block_q3_K``: 256 weights in 110 bytes) and ``Q4_K`` (144 bytes).

Layout, per super-block: ``hmask[32]`` (bit ``i`` of byte ``l`` = the third bit of weight ``32 i + l``),
``qs[64]`` (weight ``128 h + 32 s + l``'s low two bits at bit ``2 s`` of byte ``32 h + l``),
``scales[12]`` (16 six-bit sub-scales stored as ``s + 32``: low nibbles of sub-block ``j`` in byte ``j % 8``
(high half for ``j >= 8``), top two bits in byte ``8 + j % 4`` at bit ``2 (j // 4)``), then fp16 ``d``.
``block_q4_K``: fp16 ``d``, fp16 ``dmin``, ``scales[12]`` (sub-block ``j < 4``: scale in byte ``j``, min in byte
``4 + j``, low six bits; ``j >= 4``: low nibbles in byte ``8 + j - 4`` (scale low, min high), top two bits in
bits 6-7 of bytes ``j - 4`` / ``j``), ``qs[128]`` (weight ``64 c + l`` low nibble, ``64 c + 32 + l`` high nibble of
byte ``32 c + l``). The unpacking this inverts is gguf-py's ``dequantize_blocks``; the round-trip test checks it.
"""

from __future__ import annotations

import numpy as np

from tokensieve.quantize.export.grids import QK_K, SUB
from tokensieve.quantize.gptq import Quantized


def pack_q3_k(q: Quantized) -> np.ndarray:
    """``[rows, cols / 256 * 110]`` uint8."""
    rows = q.codes.shape[0]
    c = q.codes.reshape(-1, QK_K).numpy().astype(np.uint8)
    n = c.shape[0]
    low, high = c & 3, c >> 2
    qs = np.zeros((n, 64), np.uint8)
    lows = low.reshape(n, 2, 4, 32)  # [half h, shift s, l]
    for s in range(4):
        qs.reshape(n, 2, 32)[:] |= lows[:, :, s, :] << (2 * s)
    hmask = np.zeros((n, 32), np.uint8)
    highs = high.reshape(n, 8, 32)  # [bit i, l]
    for i in range(8):
        hmask |= highs[:, i, :] << i
    stored = (q.extra["s"].reshape(-1, QK_K // SUB).numpy().astype(np.int16) + 32).astype(np.uint8)
    scales = np.zeros((n, 12), np.uint8)
    for j in range(16):
        scales[:, j % 8] |= (stored[:, j] & 0x0F) << (4 * (j // 8))
        scales[:, 8 + j % 4] |= (stored[:, j] >> 4) << (2 * (j // 4))
    d = q.extra["d"].reshape(-1, 1).numpy().astype(np.float16).view(np.uint8)
    return np.concatenate([hmask, qs, scales, d], axis=1).reshape(rows, -1)


def pack_q4_k(q: Quantized) -> np.ndarray:
    """``[rows, cols / 256 * 144]`` uint8."""
    rows = q.codes.shape[0]
    c = q.codes.reshape(-1, QK_K).numpy().astype(np.uint8).reshape(-1, 4, 2, 32)
    n = c.shape[0]
    qs = (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).reshape(n, 128)
    sc, mn = (q.extra[k].reshape(-1, 8).numpy().astype(np.uint8) for k in ("sc", "m"))
    scales = np.zeros((n, 12), np.uint8)
    for j in range(4):
        scales[:, j] = sc[:, j] | ((sc[:, j + 4] >> 4) << 6)
        scales[:, 4 + j] = mn[:, j] | ((mn[:, j + 4] >> 4) << 6)
        scales[:, 8 + j] = (sc[:, j + 4] & 0x0F) | ((mn[:, j + 4] & 0x0F) << 4)
    d, dmin = (q.extra[k].reshape(-1, 1).numpy().astype(np.float16).view(np.uint8) for k in ("d", "dmin"))
    return np.concatenate([d, dmin, scales, qs], axis=1).reshape(rows, -1)
