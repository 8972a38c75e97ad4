"""A layer that holds only some key channels (ThinK): keys ``[B, Hkv, T, D']`` plus the channel indices per row and
KV head; queries drop the same channels at attention, with the full head's attention scale. The memory really falls:
``kv_bytes`` counts the smaller keys (and the index)."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import Tensor

from tokensieve.core.observe import hooks
from tokensieve.kv.cache.layers import SieveLayer


class ChannelLayer(SieveLayer):
    """``channels [B, Hkv, D']`` (ascending) are the key channels each row keeps; new keys are cut on arrival."""

    channels: Tensor

    @classmethod
    def from_dense(cls, layer: SieveLayer, channels: Tensor) -> ChannelLayer:
        out = copy.copy(layer)
        out.__class__ = cls
        out.channels = channels
        out.keys = layer.keys.gather(-1, channels[:, :, None, :].expand(*layer.keys.shape[:3], -1)).contiguous()
        return out

    def cut(self, keys: Tensor) -> Tensor:
        return keys.gather(-1, self.channels[:, :, None, :].expand(*keys.shape[:3], -1).to(keys.device))

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return super().update(self.cut(key_states), value_states, *args, **kwargs)

    def _batch_apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        super()._batch_apply(fn)
        self.channels = fn(self.channels)

    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    def held_tensors(self) -> list[Tensor | None]:
        return [self.keys, self.values, self.channels]

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        kwargs["scaling"] = hooks.scaling_of(query, kwargs)  # the full head's scale: dropped terms are just gone
        group = query.shape[1] // self.channels.shape[1]
        idx = self.channels.repeat_interleave(group, 1).to(query.device)  # [B, H, D'] per query head
        q = query.gather(-1, idx[:, :, None, :].expand(-1, -1, query.shape[2], -1))
        return hooks.sdpa(module, q, key, value, self.attention_mask(query.shape[-2], mask), **kwargs)


def channel_scores(q: Tensor, keys: Tensor, valid: Tensor | None) -> Tensor:
    """``[B, Hkv, D]``: ThinK's channel importance per row, ``mean(q_c^2)`` over the row's real queries
    ``[B, Hkv, G, n, D]`` (the context's last ``n`` positions) times ``mean(k_c^2)`` over its real keys
    ``[B, Hkv, T, D]``."""
    q2, k2 = q.float().pow(2), keys.float().pow(2)
    if valid is None:
        return q2.mean((2, 3)) * k2.mean(2)
    wq = valid[:, -q.shape[3] :][:, None, None, :, None].to(q2.dtype)
    wk = valid[:, None, :, None].to(k2.dtype)
    mean_q2 = (q2 * wq).sum((2, 3)) / (wq.sum((2, 3)) * q.shape[2]).clamp(min=1)
    return mean_q2 * (k2 * wk).sum(2) / wk.sum(2).clamp(min=1)
