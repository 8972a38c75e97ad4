"""A layer whose attention is modified: a per-(query head, slot) logit bias ``log(s)`` scales the attention a
slot receives by ``s`` before the softmax renormalises (ACT's sink calibration, ZeroTuning's initial token).

The bias is decided once, at the prefill attention, by a callback that sees this layer's queries and keys
(it may measure attention over all queries in bounded chunks), and applies to the prefill itself and to every
later step; tokens appended while decoding get no bias. The cache keeps every token (no eviction).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..observe import hooks
from .layers import SieveLayer

Decide = Callable[["BiasedLayer", Tensor, float], Tensor | None]


class BiasedLayer(SieveLayer):
    def __init__(self, layer_idx: int, decide: Decide) -> None:
        super().__init__(layer_idx)
        self.decide: Decide | None = decide
        self.bias: Tensor | None = None  # [B, H, T] additive logits (query heads)

    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    def held_tensors(self) -> list[Tensor | None]:
        return [self.keys, self.values]  # the bias is attention state, not cache: it is a few floats per token

    def evict(self, idx: Tensor, inplace: bool = True) -> SieveLayer:
        raise TypeError("an attention-modified layer keeps every token")

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        b, n_q_heads, q_len, _ = query.shape
        scaling = hooks.scaling_of(query, kwargs)
        allowed = self.attention_mask(q_len, mask)
        if self.decide is not None:
            decide, self.decide = self.decide, None
            self.bias = decide(self, query, scaling)
        if self.bias is None:
            out = hooks.sdpa(module, query, key, value, allowed, **kwargs)
        else:
            n = self.keys.shape[-2]
            bias = self.bias
            if bias.shape[-1] < n:  # appended tokens: no bias
                bias = torch.cat([bias, bias.new_zeros(*bias.shape[:2], n - bias.shape[-1])], -1)
                self.bias = bias
            if allowed is None:
                allowed = torch.ones(q_len, n, dtype=torch.bool, device=query.device).tril(n - q_len)[None, None]
            logits = bias[:, :, None, :].to(query.dtype).expand(b, n_q_heads, q_len, n)
            out = hooks.sdpa(module, query, key, value, logits.masked_fill(~allowed, float("-inf")), **kwargs)
        if self.on_attention is not None:
            self.on_attention(self, query, scaling)
        return out

    def _batch_apply(self, fn) -> None:
        super()._batch_apply(fn)
        self.bias = None if self.bias is None else fn(self.bias)
