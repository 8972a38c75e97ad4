"""Cache layers whose tokens can be evicted.

``SieveLayer`` follows transformers' own evicting layer (``DynamicSlidingWindowLayer``): it reports the
number of tokens *seen* as its sequence length, so ``generate`` slices inputs and numbers positions
correctly, and it offsets the mask by what it no longer holds. Sliding-window layers are left as
transformers builds them: they already bound their size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.core.ops.select import gather_tokens

OnAttention = Callable[["SieveLayer", Tensor, float], None]


class SieveLayer(compat.BaseLayer):
    """Keys and values ``[B, Hkv, T, D]`` plus what eviction needs to stay exact:

    - ``valid [B, T]``: False for padding slots (None when there is none),
    - ``token_index [B, Hkv, T]``: the sequence index each slot holds (None until something is evicted),
    - ``cumulative_length``: tokens seen so far, which is what positions and generate count.
    """

    def __init__(self, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.cumulative_length = 0
        self.valid: Tensor | None = None
        self.token_index: Tensor | None = None
        self.on_attention: OnAttention | None = None
        self.attend_with: Callable | None = None  # computes this layer's attention itself (a scoring pass)

    # --- transformers' layer protocol -------------------------------------------------------------
    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        keys, values = super().update(key_states, value_states)
        n = key_states.shape[-2]
        if self.token_index is not None:
            new = torch.arange(self.cumulative_length, self.cumulative_length + n, device=keys.device)
            self.token_index = torch.cat([self.token_index, new.expand(*self.token_index.shape[:2], n)], -1)
        self.cumulative_length += n
        hooks.bind(self)
        return keys, values

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        held = self.n_held
        return held + query_length, self.cumulative_length - held

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove from the end")
        n = -tokens_to_remove
        if n == 0 or not self.is_initialized:
            return
        self.keys, self.values = self.keys[..., :-n, :], self.values[..., :-n, :]
        self.valid = None if self.valid is None else self.valid[:, :-n]
        self.token_index = None if self.token_index is None else self.token_index[..., :-n]
        self.cumulative_length -= n

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self.valid = self.token_index = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._batch_apply(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._batch_apply(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self._batch_apply(lambda x: x[indices])

    def _batch_apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.valid = None if self.valid is None else fn(self.valid)
        self.token_index = None if self.token_index is None else fn(self.token_index)

    # --- tokensieve ----------------------------------------------------------------------------
    @property
    def n_held(self) -> int:
        return 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]

    @property
    def evicted(self) -> bool:
        return self.n_held < self.cumulative_length

    @property
    def needs_tokensieve_attention(self) -> bool:
        return self.evicted or self.on_attention is not None or self.attend_with is not None

    def held_tensors(self) -> list[Tensor | None]:
        """Every tensor attention reads from this layer: what ``kv_bytes`` counts (other layouts add theirs)."""
        return [self.keys, self.values]

    def tokens_per_head(self) -> float:
        """Slots held per (row, KV head); ragged layouts report their mean."""
        return self.n_held

    def owns(self, key: Tensor) -> bool:
        """Whether ``key`` is what this layer's last ``update`` returned (the attention call is ours)."""
        return self.keys is key

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        """The attention of this layer's held slots. Other layouts (ragged, quantized, sparse) override it."""
        if self.attend_with is not None:
            self.attention_mask(query.shape[-2], mask)  # records the new slots' padding in `valid`
            return self.attend_with(self, query, value, hooks.scaling_of(query, kwargs))
        out = hooks.sdpa(module, query, key, value, self.attention_mask(query.shape[-2], mask), **kwargs)
        if self.on_attention is not None:
            self.on_attention(self, query, hooks.scaling_of(query, kwargs))
        return out

    def attention_mask(self, q_len: int, mask: Tensor | None) -> Tensor | None:
        """Record which new slots are padding and return the mask for this layer's held slots.

        Until something is evicted the model's own mask is exact and is returned untouched (bit-identical
        outputs). After eviction the held slots are not the last positions any more, so the past part is
        rebuilt from ``valid``; the block of new tokens (causal + their padding) is the mask's last columns.
        """
        b = self.keys.shape[0]
        past = self.n_held - q_len
        if mask is not None and mask.dtype == torch.bool:
            new_valid = mask[:, 0, -1, -q_len:]  # the last query row sees every real new token
            if self.valid is not None or not bool(new_valid.all()):
                old = self.valid if self.valid is not None else new_valid.new_ones(b, past)
                self.valid = torch.cat([old, new_valid.expand(b, q_len)], -1)
        elif self.valid is not None:
            self.valid = torch.cat([self.valid, self.valid.new_ones(b, q_len)], -1)
        if mask is None:
            if self.valid is None and (q_len == 1 or past == 0):
                return None  # SDPA's own causal handling is exact here
            new_block = torch.ones(q_len, q_len, dtype=torch.bool, device=self.keys.device).tril()[None, None]
        elif mask.shape[-1] == self.n_held and not self.evicted:
            return mask
        else:
            new_block = mask[..., -q_len:]
        held = self.valid[:, :past] if self.valid is not None else new_block.new_ones(b, past)
        return torch.cat([held[:, None, None, :].expand(b, 1, q_len, past), new_block.expand(b, 1, q_len, q_len)], -1)

    def fork(self) -> SieveLayer:
        """A copy sharing tensors; safe because updates rebind new tensors instead of writing in place."""
        out = copy.copy(self)
        out.on_attention = out.attend_with = None
        return out

    def evict(self, idx: Tensor, inplace: bool = True) -> SieveLayer:
        """Keep only the slots ``idx [B, Hkv, k]`` (ascending); in place, or as a new layer sharing nothing."""
        out = self if inplace else copy.copy(self)
        out.keys, out.values = gather_tokens(self.keys, idx), gather_tokens(self.values, idx)
        if self.valid is not None:
            kept = self.valid.gather(1, idx[:, 0])  # padding sorts first in every head, so head 0 speaks for all
            out.valid = None if bool(kept.all()) else kept
        out.token_index = idx if self.token_index is None else self.token_index.gather(2, idx)
        out.on_attention = None
        return out


class CompactSlidingLayer(compat.SlidingLayer):
    """transformers' sliding layer keeps a *view* of the whole prefill, so its storage still holds every
    prompt token; copying the window out frees that memory (measured by ``kv_bytes``)."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        out = super().update(key_states, value_states, *args, **kwargs)
        # a prefill longer than the window leaves a large slack (measured by kv_bytes): copy it out; a decode
        # step's one-token slack is not worth a copy
        if self.keys.untyped_storage().nbytes() > 1.125 * self.keys.nbytes:
            self.keys, self.values = self.keys.clone(), self.values.clone()
        return out
