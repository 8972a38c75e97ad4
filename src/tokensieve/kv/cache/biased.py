"""A layer whose attention is modified: a per-(query head, slot) logit bias ``log(s)`` scales the attention a
slot receives by ``s`` before the softmax renormalises (ACT's sink calibration, ZeroTuning's initial token).

The bias is decided once, at the prefill attention, by a callback that sees this layer's queries and keys
(it may measure attention over all queries in bounded chunks), and applies to the prefill itself and to every
later step; tokens appended while decoding get no bias. The cache keeps every token (no eviction).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe import hooks
from tokensieve.kv.cache.layers import SieveLayer

Decide = Callable[["BiasedLayer", Tensor, float], Tensor | None]


class BiasedLayer(SieveLayer):
    small_q = 16  # query blocks up to this size take the explicit-logits path

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
        q_len = query.shape[2]
        scaling = hooks.scaling_of(query, kwargs)
        allowed = self.attention_mask(q_len, mask)
        if self.decide is not None:
            decide, self.decide = self.decide, None
            self.bias = decide(self, query, scaling)
        if self.bias is None:
            out = hooks.sdpa(module, query, key, value, allowed, **kwargs)
        else:
            out = self._biased(query, key, value, allowed, scaling), None
        if self.on_attention is not None:
            self.on_attention(self, query, scaling)
        return out

    def _biased(self, query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None, scaling: float) -> Tensor:
        """SDPA with ``bias[b, h, j]`` added to every logit of column ``j``, without a [q, T] float mask per head:
        the bias rides in one extra key dimension (query 1, key ``bias / scaling``), so the only mask is the
        usual boolean one (or none, causal)."""
        _, n_q_heads, q_len, _ = query.shape
        n = key.shape[-2]
        bias = self.bias
        if bias.shape[-1] < n:  # appended tokens: no bias
            bias = torch.cat([bias, bias.new_zeros(*bias.shape[:2], n - bias.shape[-1])], -1)
            self.bias = bias
        h_kv = key.shape[1]
        g = n_q_heads // h_kv
        d = query.shape[-1]
        if q_len <= self.small_q:  # decoding: [g x q, T] logits per KV head are small; no padded copies
            return self._biased_small(query, key, value, allowed, scaling, bias, g)
        # q, k and v padded to one head size, a multiple of 8, so that SDPA keeps its fused (flash) CPU kernel
        # instead of the math path (which would build the [T, T] attention matrix); one KV head's group at a
        # time, so the padded copies stay small (a few MiB at 2k tokens) and the allocator reuses them
        width = (d + 1 + 7) // 8 * 8
        out = query.new_empty(query.shape[0], q_len, n_q_heads, d)
        causal = allowed is None and q_len > 1
        for kh in range(h_kv):
            heads = slice(kh * g, (kh + 1) * g)
            queries = F.pad(query[:, heads], (0, width - d), value=0.0)
            queries[..., d] = 1.0
            keys = F.pad(key[:, kh : kh + 1], (0, width - d), value=0.0).expand(-1, g, -1, -1).clone()
            keys[..., d] = (bias[:, heads] / scaling).to(key.dtype)
            values = F.pad(value[:, kh : kh + 1], (0, width - d), value=0.0).expand(-1, g, -1, -1)
            o = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=allowed, is_causal=causal, scale=scaling
            )
            out[:, :, heads] = o[..., :d].transpose(1, 2)
        return out

    @staticmethod
    def _biased_small(query, key, value, allowed, scaling, bias, g) -> Tensor:
        b, n_q_heads, q_len, d = query.shape
        h_kv, n = key.shape[1], key.shape[-2]
        q = query.reshape(b, h_kv, g * q_len, d)
        logits = torch.matmul(q, key.transpose(-1, -2)).mul_(scaling).view(b, n_q_heads, q_len, n)
        logits += bias[:, :, None, :].to(logits.dtype)
        if allowed is not None:
            logits.masked_fill_(~allowed, float("-inf"))
        elif q_len > 1:  # causal within the new block
            logits.masked_fill_(
                torch.ones(q_len, n, dtype=torch.bool, device=q.device).triu(n - q_len + 1), float("-inf")
            )
        probs = logits.softmax(-1).view(b, h_kv, g * q_len, n)
        return torch.matmul(probs, value).view(b, n_q_heads, q_len, d).transpose(1, 2)

    def _batch_apply(self, fn) -> None:
        super()._batch_apply(fn)
        self.bias = None if self.bias is None else fn(self.bias)
