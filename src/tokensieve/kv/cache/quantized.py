"""A mixed-precision layout: important tokens in full precision, the others quantized per token.

The full-precision part is the ``SieveLayer`` itself (``keys``/``values``, its padding and indices); every
token appended while decoding lands there too. The rest sits in quantized *tiers* (``core.ops.quant.QTensor``:
packed INT8/INT4/INT2 codes with fp16 scales and zero points, keys optionally channel-balanced), each with
its own tokens per head. ``kv_bytes`` counts the packed codes, scales, zero points and channel factors.

Attention dequantizes this layer's tiers on the fly into one buffer with the full-precision part, then runs
SDPA: the transient is one layer's keys and values in full precision (2 x B x Hkv x T x D x 4 bytes; 3 MiB
for SmolLM2 at 2k tokens), freed before the next layer. Token order inside a head does not matter to
attention (positions are already in the keys), so the buffer is [tiers..., full-precision part].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.core.ops.quant import QTensor, quantize
from tokensieve.kv.cache.layers import SieveLayer


@dataclass
class Tier:
    keys: QTensor  # [B, Hkv, n, D]
    values: QTensor
    index: Tensor  # [B, Hkv, n] sequence index of each slot
    valid: Tensor | None  # [B, Hkv, n] False for padding (None: none)

    @property
    def n(self) -> int:
        return self.index.shape[-1]

    def tensors(self) -> list[Tensor | None]:
        return [*self.keys.tensors(), *self.values.tensors()]

    def apply(self, fn) -> Tier:
        return replace(
            self,
            keys=self.keys.apply(fn),
            values=self.values.apply(fn),
            index=fn(self.index),
            valid=None if self.valid is None else fn(self.valid),
        )


class MixedLayer(SieveLayer):
    def __init__(self, layer_idx: int = 0) -> None:
        super().__init__(layer_idx)
        self.tiers: list[Tier] = []

    @classmethod
    def from_ranking(
        cls,
        layer: SieveLayer,
        order: Tensor,
        splits: list[tuple[int, int | None]],
        group: int = 32,
        balance_keys: bool = True,
    ) -> MixedLayer:
        """Consecutive slices of the ranking ``order [B, Hkv, T]`` (most wanted first) get their precision:
        ``splits`` is ``[(count, bits), ...]`` with ``bits`` None for full precision and 0 for eviction.
        At most one slice may be full precision; tokens past the last slice are evicted."""
        out = cls(layer.layer_idx)
        out.cumulative_length = layer.cumulative_length
        b, h, t, _ = layer.keys.shape
        empty = order.new_empty(b, h, 0)
        full_idx, at = empty, 0
        tiers = []
        for count, bits in splits:
            idx = order[..., at : at + count].sort(-1).values
            at += count
            if idx.shape[-1] == 0 or bits == 0:
                continue
            if bits is None:
                full_idx = idx
                continue
            keys, values = _gather(layer.keys, idx), _gather(layer.values, idx)
            valid = None if layer.valid is None else layer.valid[:, None, :].expand(b, h, t).gather(2, idx)
            index = idx if layer.token_index is None else layer.token_index.gather(2, idx)
            tiers.append(
                Tier(
                    quantize(keys, bits, group, balance=balance_keys, valid=valid),
                    quantize(values, bits, group, balance=False),
                    index,
                    None if valid is None or bool(valid.all()) else valid,
                )
            )
        dense = layer.evict(full_idx, inplace=False)
        out.keys, out.values = dense.keys, dense.values
        out.token_index, out.valid = dense.token_index, dense.valid
        compat.mark_initialized(out, layer.keys)
        out.tiers = tiers
        return out

    # --- tokensieve ----------------------------------------------------------------------------
    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    @property
    def evicted(self) -> bool:
        return True

    def held_tensors(self) -> list[Tensor | None]:
        return [self.keys, self.values, *(t for tier in self.tiers for t in tier.tensors())]

    def tokens_per_head(self) -> float:
        return self.n_held + sum(tier.n for tier in self.tiers)

    def evict(self, idx: Tensor, inplace: bool = True) -> SieveLayer:
        raise TypeError("a mixed-precision layer is already compressed; evict the dense layer it was built from")

    def _batch_apply(self, fn) -> None:
        super()._batch_apply(fn)
        self.tiers = [tier.apply(fn) for tier in self.tiers]

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        b, n_q_heads, q_len, d = query.shape
        h = self.keys.shape[1]
        dense_mask = self.attention_mask(q_len, mask)  # records the new tokens' padding
        n_tiers = sum(tier.n for tier in self.tiers)
        n_dense = self.keys.shape[-2]
        keys = query.new_empty(b, h, n_tiers + n_dense, d)
        values = query.new_empty(b, h, n_tiers + n_dense, d)
        at = 0
        for tier in self.tiers:
            tier.keys.dequantize(query.dtype, out=keys[:, :, at : at + tier.n])
            tier.values.dequantize(query.dtype, out=values[:, :, at : at + tier.n])
            at += tier.n
        keys[:, :, at:] = self.keys
        values[:, :, at:] = self.values
        return hooks.sdpa(module, query, keys, values, self._mask(dense_mask, b, h, q_len, n_q_heads), **kwargs)

    def _mask(self, dense_mask: Tensor | None, b: int, h: int, q_len: int, n_q_heads: int) -> Tensor | None:
        tiers_valid = [tier.valid for tier in self.tiers]
        if dense_mask is None and all(v is None for v in tiers_valid) and q_len == 1:
            return None
        device = self.keys.device
        if dense_mask is None:  # no padding: the past is visible, the new block causal
            n = self.keys.shape[-2]
            dense_mask = torch.ones(q_len, n, dtype=torch.bool, device=device)
            dense_mask[:, n - q_len :] = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
            dense_mask = dense_mask[None, None]
        per_head = any(v is not None for v in tiers_valid)
        parts = []
        for tier in self.tiers:
            if tier.valid is None:
                parts.append(torch.ones(b, h if per_head else 1, q_len, tier.n, dtype=torch.bool, device=device))
            else:
                parts.append(tier.valid[:, :, None, :].expand(b, h, q_len, tier.n))
        parts.append(dense_mask.expand(b, h if per_head else 1, q_len, dense_mask.shape[-1]))
        out = torch.cat(parts, -1)
        return out.repeat_interleave(n_q_heads // h, 1) if per_head else out


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    return x.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))
