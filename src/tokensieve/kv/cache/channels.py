"""A layer that holds only some key channels (ThinK): keys ``[B, Hkv, T, D']`` plus the channel indices per KV
head; queries drop the same channels at attention, with the full head's attention scale. The memory really falls:
``kv_bytes`` counts the smaller keys (and the index)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from tokensieve.core.observe import hooks
from tokensieve.kv.cache.layers import SieveLayer


class ChannelLayer(SieveLayer):
    """``channels [Hkv, D']`` (ascending) are the key channels kept by every row; new keys are cut on arrival."""

    channels: Tensor

    @classmethod
    def from_dense(cls, layer: SieveLayer, channels: Tensor) -> ChannelLayer:
        out = copy.copy(layer)
        out.__class__ = cls
        out.channels = channels
        out.keys = layer.keys.gather(-1, channels[None, :, None, :].expand(*layer.keys.shape[:3], -1)).contiguous()
        return out

    def cut(self, keys: Tensor) -> Tensor:
        return keys.gather(-1, self.channels[None, :, None, :].expand(*keys.shape[:3], -1).to(keys.device))

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return super().update(self.cut(key_states), value_states, *args, **kwargs)

    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    def held_tensors(self) -> list[Tensor | None]:
        return [self.keys, self.values, self.channels]

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        kwargs["scaling"] = hooks.scaling_of(query, kwargs)  # the full head's scale: dropped terms are just gone
        group = query.shape[1] // self.channels.shape[0]
        idx = self.channels.repeat_interleave(group, 0).to(query.device)  # [H, D'] per query head
        q = query.gather(-1, idx[None, :, None, :].expand(query.shape[0], -1, query.shape[2], -1))
        return hooks.sdpa(module, q, key, value, self.attention_mask(query.shape[-2], mask), **kwargs)


def channel_scores(q: Tensor, keys: Tensor, valid: Tensor | None) -> Tensor:
    """``[Hkv, D]``: ThinK's channel importance, ``mean(q_c^2)`` over the queries ``[B, Hkv, G, n, D]`` (and rows)
    times ``mean(k_c^2)`` over the real keys ``[B, Hkv, T, D]``."""
    k2 = keys.float().pow(2)
    if valid is not None:
        k2 = k2 * valid[:, None, :, None]
        n = valid.sum().clamp(min=1)
    else:
        n = torch.tensor(keys.shape[0] * keys.shape[2])
    return q.float().pow(2).mean((0, 2, 3)) * (k2.sum((0, 2)) / n)
