"""Attention-derived statistics, as pure functions on small tensors.

Shapes: queries are grouped per KV head, ``q: [B, Hkv, G, n, D]``; keys are ``k: [B, Hkv, T, D]``;
``rows`` are the token indices of the ``n`` query rows (ascending, shared by the batch) and ``valid``
is ``[B, T]`` (False for padding) or None. Causality is by token index: row ``i`` sees keys ``j <= i``.
Nothing here materialises a T x T matrix: callers pass a few rows, or loop over row chunks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def group_queries(q: Tensor, n_kv_heads: int) -> Tensor:
    """[B, H, n, D] -> [B, Hkv, G, n, D] (query heads of one GQA group are adjacent, as in repeat_kv)."""
    b, h, n, d = q.shape
    return q.view(b, n_kv_heads, h // n_kv_heads, n, d)


def visible_mask(rows: Tensor, n_keys: int, valid: Tensor | None) -> Tensor:
    """Bool [B or 1, 1, 1, n, T]: row i sees key j when j <= i and j is not padding."""
    cols = torch.arange(n_keys, device=rows.device)
    mask = (cols[None, :] <= rows[:, None])[None, None, None]
    if valid is not None:
        mask = mask & valid[:, None, None, None, :n_keys]
    return mask


def visible_bias(rows: Tensor, n_keys: int, valid: Tensor | None) -> Tensor:
    """The same as an additive 0 / -inf float mask (adding is much faster than a broadcast masked_fill)."""
    bias = torch.zeros(visible_mask(rows, n_keys, valid).shape, device=rows.device)
    return bias.masked_fill_(~visible_mask(rows, n_keys, valid), float("-inf"))


def attention_logits(q: Tensor, k: Tensor, rows: Tensor, valid: Tensor | None, scaling: float) -> Tensor:
    """Masked pre-softmax logits [B, Hkv, G, n, T'] with T' = rows[-1] + 1 (keys after the last row are unseen)."""
    b, hkv, g, n, d = q.shape
    t = int(rows[-1]) + 1
    logits = torch.matmul((q * scaling).reshape(b, hkv, g * n, d), k[:, :, :t].transpose(-1, -2))
    return logits.view(b, hkv, g, n, t).add_(visible_bias(rows, t, valid))


def softmax_rows(logits: Tensor, padded: bool) -> Tensor:
    """Softmax over keys; with padding, rows that see no key become zeros, not NaN."""
    probs = torch.softmax(logits, dim=-1)
    return probs.nan_to_num_(0.0) if padded else probs


def attention_probs(q: Tensor, k: Tensor, rows: Tensor, valid: Tensor | None, scaling: float) -> Tensor:
    probs = torch.softmax(attention_logits(q, k, rows, valid, scaling), dim=-1)
    if valid is not None:  # padding rows see nothing: zeros, not NaN
        probs = probs.nan_to_num_(0.0).mul_(valid[:, rows].float()[:, None, None, :, None])
    return probs


def row_validity(rows: Tensor, valid: Tensor | None, batch: int) -> Tensor:
    """Float [B, n]: 1 for real query rows, 0 for padding rows."""
    if valid is None:
        return torch.ones(batch, rows.numel(), device=rows.device)
    return valid[:, rows].float()


def visible_counts(rows: Tensor, n_keys: int, valid: Tensor | None, batch: int) -> Tensor:
    """[B, T]: how many of the (real) query rows can see each key; ZipCache's normaliser."""
    w = row_validity(rows, valid, batch)  # [B, n]
    per_row = torch.zeros(batch, n_keys, device=rows.device)
    per_row.index_add_(1, rows, w)  # rows land on their own index
    # a row at index i sees every key j <= i: count(j) = sum_{i >= j} w_i
    return per_row.flip(-1).cumsum(-1).flip(-1)


NOISE_BLOCK = 64


def gumbel_noise(seed: int, n_heads: int, rows: Tensor, n_keys: int) -> Tensor:
    """Gumbel(0, 1) noise [1, n_heads, n_rows, n_keys] for contiguous ``rows``.

    Keyformer's noise must not depend on how rows are chunked, so it is drawn in fixed blocks of
    ``NOISE_BLOCK`` rows, each from its own seeded generator: any chunking sees the same noise.
    """
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    parts = []
    for block in range(lo // NOISE_BLOCK, (hi - 1) // NOISE_BLOCK + 1):
        b0 = block * NOISE_BLOCK
        # numpy's SFC64 is a fast, vectorised generator (torch's CPU mt19937 is ~2x slower here)
        gen = np.random.Generator(np.random.SFC64([seed, block]))
        e = torch.from_numpy(gen.random((n_heads, NOISE_BLOCK, b0 + NOISE_BLOCK), dtype=np.float32))
        r0, r1 = max(lo, b0) - b0, min(hi, b0 + NOISE_BLOCK) - b0
        part = e[:, r0:r1, :n_keys]
        if part.shape[-1] < n_keys:  # columns past this block's last row are masked anyway
            part = torch.cat([part, part.new_full((n_heads, r1 - r0, n_keys - part.shape[-1]), 0.5)], -1)
        parts.append(part)
    u = torch.cat(parts, 1).clamp_(1e-30, 1.0 - 1e-7)
    return u.log_().neg_().log_().neg_().unsqueeze(0).to(rows.device)


def row_chunks(start: int, stop: int, n_heads: int, n_keys: int, batch: int, max_bytes: int) -> Iterator[Tensor]:
    """Yield ascending row ranges whose fp32 [B, H, rows, T] block fits in ``max_bytes``."""
    per_row = max(1, batch * n_heads * n_keys * 4)
    size = max(1, max_bytes // per_row)
    for lo in range(start, stop, size):
        yield torch.arange(lo, min(lo + size, stop))


def pool_keys(scores: Tensor, kernel: int, how: str = "max") -> Tensor:
    """1-D pooling along the key axis so that neighbours of a strong token survive with it (SnapKV)."""
    if kernel <= 1:
        return scores
    b, h, t = scores.shape
    x = scores.reshape(b * h, 1, t)
    pad = kernel // 2
    if how == "max":
        y = F.max_pool1d(F.pad(x, (pad, pad), value=float("-inf")), kernel, stride=1)
    elif how == "avg":
        y = F.avg_pool1d(F.pad(x, (pad, pad), value=0.0), kernel, stride=1)
    else:
        raise ValueError(f"unknown pooling {how!r}: use 'max' or 'avg'")
    return y[..., :t].reshape(b, h, t)


def decay_weights(rows: Tensor, last_row: int, decay: float) -> Tensor:
    """lambda^(last - i) for each row: A2SF's forgetting factor unrolled over the scan."""
    if decay == 1.0:
        return torch.ones(rows.numel())
    return torch.exp((last_row - rows).double() * math.log(decay)).float()


@lru_cache(maxsize=4)
def _noise_block(seed: int, block: int) -> Tensor:
    """Keyformer's Gumbel noise for rows [64 * block, 64 * block + 64) over every key they can see: the same
    values the prefill statistic draws (``gumbel_noise``), computed once per 64 decode steps."""
    b0 = block * NOISE_BLOCK
    return gumbel_noise(seed, 1, torch.arange(b0, b0 + NOISE_BLOCK), b0 + NOISE_BLOCK)[0, 0]


def gumbel_rows(seed: int, rows: Tensor, positions: Tensor) -> Tensor:
    """Noise [B, Hkv, q, S] at (row, positions[b, h, s]) for each new row: shared by heads, as at prefill."""
    out = []
    for r in rows.tolist():  # one row per decode step; a forward has only a few new rows
        block = _noise_block(seed, r // NOISE_BLOCK).to(positions.device)
        out.append(block[r % NOISE_BLOCK][positions.clamp(max=block.shape[1] - 1)])
    return torch.stack(out, 2)
