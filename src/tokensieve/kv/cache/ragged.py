"""A ragged per-head layout: every (row, KV head) keeps its own number of tokens, and the bytes held are
the sum of what each head keeps.

Storage is varlen: one flat ``[C, D]`` tensor for keys and one for values, cut into segments, one per
(row, KV head), each a contiguous run ``[start, start + length)``. Attention runs one SDPA call per segment
on views of the flat storage (no copy), with the segment's GQA group of query heads stacked as rows, so the
Python loop is over the ``B x Hkv`` segments of a layer (3 for SmolLM2 at batch 1), never over tokens.

Decoding appends the same new tokens to every segment in place. To make appends amortised O(1) instead of
copying the cache every step (what ``DynamicLayer``'s ``torch.cat`` does), a segment that runs out of room
is regrown with ``grow`` spare slots: right after compression the storage holds exactly the kept tokens,
and while decoding it holds at most ``grow`` (16) unused slots per segment. Copies share storage with
``fork()``; whichever writes first copies it (copy on write), so a forked cache never changes its source.

A slot may stand for several tokens (a merge, a compensation token): ``bias`` holds log(weight) per slot,
added to its attention logits (ToMe's proportional attention), so a slot of weight ``m`` draws the
attention of ``m`` tokens with its key.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.kv.cache.layers import SieveLayer


class RaggedLayer(SieveLayer):
    grow = 16  # spare slots a segment gets when it must be regrown (the padding bound while decoding)

    def __init__(self, layer_idx: int, batch: int, n_kv_heads: int) -> None:
        super().__init__(layer_idx)
        self.batch, self.n_kv_heads = batch, n_kv_heads
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.caps: list[int] = []
        self.flat_index: Tensor | None = None  # [C] sequence index of each slot (-1: a synthetic slot)
        self.flat_valid: Tensor | None = None  # [C] False for padding (None: no padding held)
        self.flat_bias: Tensor | None = None  # [C] log(weight) of each slot (None: every slot is one token)
        self.exclusive = True  # False while the storage may be shared with a fork (copy on write)
        self._returned: Tensor | None = None
        self._new_slots: Tensor | None = None

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_segments(
        cls,
        layer_idx: int,
        cumulative_length: int,
        batch: int,
        n_kv_heads: int,
        keys: list[Tensor],
        values: list[Tensor],
        index: list[Tensor],
        bias: list[Tensor] | None = None,
    ) -> RaggedLayer:
        """A layer from per-segment tensors (``[L_s, D]`` keys/values, ``[L_s]`` indices and log-weights), in
        (row, head) order. Padding is not held: callers pass real tokens only."""
        out = cls(layer_idx, batch, n_kv_heads)
        out.cumulative_length = cumulative_length
        out.lengths = [int(k.shape[0]) for k in keys]
        out.caps = list(out.lengths)
        out.starts = _starts(out.caps)
        out.keys, out.values = torch.cat(keys), torch.cat(values)
        out.flat_index = torch.cat(index).long()
        if bias is not None:
            flat = torch.cat(bias).float()
            out.flat_bias = None if bool((flat == 0).all()) else flat
        compat.mark_initialized(out, out.keys)
        return out

    @classmethod
    def from_dense(cls, layer: SieveLayer, order: Tensor, counts: Tensor) -> RaggedLayer:
        """Keep, in each (row, head), the first ``counts[b, h]`` tokens of ``order [B, Hkv, T]`` (most wanted
        first) of a dense layer, in ascending sequence order."""
        b, h = counts.shape
        keys, values, index = [], [], []
        for row in range(b):
            for head in range(h):
                idx = order[row, head, : int(counts[row, head])].sort().values
                keys.append(layer.keys[row, head].index_select(0, idx))
                values.append(layer.values[row, head].index_select(0, idx))
                src = layer.token_index[row, head] if layer.token_index is not None else None
                index.append(idx if src is None else src.index_select(0, idx))
        return cls.from_segments(layer.layer_idx, layer.cumulative_length, b, h, keys, values, index)

    @classmethod
    def stack(cls, layers: list[RaggedLayer]) -> RaggedLayer:
        """One layer whose rows are the given layers' rows in order (same context length, same heads, no
        padding held): how the bench evaluates several compressed cells in one batch."""
        keys, values, index, bias = [], [], [], []
        for layer in layers:
            for lo, n in zip(layer.starts, layer.lengths, strict=True):
                keys.append(layer.keys[lo : lo + n])
                values.append(layer.values[lo : lo + n])
                index.append(layer.flat_index[lo : lo + n])
                b = layer.flat_bias
                bias.append(b[lo : lo + n] if b is not None else torch.zeros(n, device=layer.keys.device))
        first = layers[0]
        rows = sum(layer.batch for layer in layers)
        return cls.from_segments(
            first.layer_idx, first.cumulative_length, rows, first.n_kv_heads, keys, values, index, bias
        )

    # --- transformers' layer protocol -------------------------------------------------------------
    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        b, h, n, _ = key_states.shape
        if (b, h) != (self.batch, self.n_kv_heads):
            raise ValueError(
                f"a ragged layer of {self.batch} rows x {self.n_kv_heads} heads got keys {key_states.shape}"
            )
        self._append(key_states, value_states, n)
        self.cumulative_length += n
        self._returned = key_states
        hooks.bind(self)
        return key_states, value_states

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove from the end")
        n = -tokens_to_remove
        if n == 0:
            return
        if n > min(self.lengths):
            raise ValueError(f"cannot crop {n} tokens: a head holds only {min(self.lengths)}")
        self.lengths = [length - n for length in self.lengths]
        self.cumulative_length -= n

    def reset(self) -> None:
        super().reset()
        self.starts, self.lengths, self.caps = [], [], []
        self.flat_index = self.flat_valid = self.flat_bias = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_rows([int(i) for i in beam_idx])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_rows([row for row in range(self.batch) for _ in range(repeats)])

    def batch_select_indices(self, indices: Tensor) -> None:
        rows = torch.arange(self.batch)[indices]
        self._select_rows([int(i) for i in rows.reshape(-1)])

    # --- tokensieve ----------------------------------------------------------------------------
    @property
    def n_held(self) -> int:
        """The longest segment: what a dense layout would need per head."""
        return max(self.lengths) if self.lengths else 0

    @property
    def evicted(self) -> bool:
        return True

    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    def held_tensors(self) -> list[Tensor | None]:
        return [self.keys, self.values, self.flat_bias]

    def tokens_per_head(self) -> float:
        return sum(self.lengths) / max(1, len(self.lengths))

    def owns(self, key: Tensor) -> bool:
        return self._returned is key

    def segment(self, row: int, head: int) -> tuple[Tensor, Tensor, Tensor]:
        """Views (keys ``[L, D]``, values, sequence indices ``[L]``) of one segment."""
        s = row * self.n_kv_heads + head
        lo, hi = self.starts[s], self.starts[s] + self.lengths[s]
        return self.keys[lo:hi], self.values[lo:hi], self.flat_index[lo:hi]

    def fork(self) -> RaggedLayer:
        out = copy.copy(self)
        out.on_attention = None
        out.starts, out.lengths, out.caps = list(self.starts), list(self.lengths), list(self.caps)
        self.exclusive = out.exclusive = False
        return out

    def evict(self, idx: Tensor, inplace: bool = True) -> SieveLayer:
        raise TypeError("a ragged layer is already compressed per head; evict the dense layer it was built from")

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        """One SDPA call per (row, KV head) segment; the group's query heads are stacked as query rows."""
        b, n_q_heads, q_len, d = query.shape
        g = n_q_heads // self.n_kv_heads
        scaling = hooks.scaling_of(query, kwargs)
        new_block = None  # [B, q, q] bool: which new tokens each new query sees (causal + padding)
        if mask is not None:
            new_block = mask[:, 0, :, -q_len:].expand(b, q_len, q_len)
            if new_block.dtype != torch.bool:
                new_block = new_block == 0
            self._record_new_validity(new_block[:, -1, :])
        out = query.new_empty(b, q_len, n_q_heads, d)
        for s in range(len(self.lengths)):
            row, head = divmod(s, self.n_kv_heads)
            lo, n = self.starts[s], self.lengths[s]
            k, v = self.keys[lo : lo + n], self.values[lo : lo + n]
            m = self._segment_mask(lo, n, q_len, None if new_block is None else new_block[row])
            qs = query[row, head * g : (head + 1) * g].reshape(1, 1, g * q_len, d)
            if m is not None:
                m = m.repeat(g, 1)[None, None]
            o = F.scaled_dot_product_attention(qs, k[None, None], v[None, None], attn_mask=m, scale=scaling)
            out[row, :, head * g : (head + 1) * g] = o.view(g, q_len, d).transpose(0, 1)
        return out, None

    # --- internals -----------------------------------------------------------------------------
    def _segment_mask(self, lo: int, n: int, q_len: int, new_block: Tensor | None) -> Tensor | None:
        """[q, n]: None when every query sees every slot (one new token, no padding, no weights)."""
        past = n - q_len
        valid = None if self.flat_valid is None else self.flat_valid[lo : lo + past]
        bias = None if self.flat_bias is None else self.flat_bias[lo : lo + past]
        if new_block is None:
            if q_len == 1 and bias is None and valid is None:
                return None  # the decode hot path: one new token sees every slot
            new_block = torch.ones(q_len, q_len, dtype=torch.bool, device=self.keys.device).tril()
        if bias is None and (valid is None or bool(valid.all())) and bool(new_block.all()):
            return None
        seen = torch.ones(q_len, past, dtype=torch.bool, device=self.keys.device)
        if valid is not None:
            seen = seen & valid[None, :]
        allowed = torch.cat([seen, new_block], -1)
        if bias is None:
            return allowed
        logits = torch.cat(
            [
                bias.to(self.keys.dtype)[None, :].expand(q_len, past),
                allowed.new_zeros(q_len, q_len, dtype=self.keys.dtype),
            ],
            -1,
        )
        return logits.masked_fill(~allowed, float("-inf"))

    def _append(self, key_states: Tensor, value_states: Tensor, n: int) -> None:
        full = any(length + n > cap for length, cap in zip(self.lengths, self.caps, strict=True))
        # an inference tensor cannot be written outside inference mode: copy it out first
        frozen = self.keys.is_inference() and not torch.is_inference_mode_enabled()
        if full or frozen or not self.exclusive:
            self._regrow(n)
        device = self.keys.device
        ends = torch.tensor([s + length for s, length in zip(self.starts, self.lengths, strict=True)], device=device)
        slots = (ends[:, None] + torch.arange(n, device=device)).reshape(-1)  # (row, head)-major, like the states
        d = key_states.shape[-1]
        self.keys.index_copy_(0, slots, key_states.reshape(-1, d).to(self.keys.dtype))
        self.values.index_copy_(0, slots, value_states.reshape(-1, d).to(self.values.dtype))
        new_index = torch.arange(self.cumulative_length, self.cumulative_length + n, device=device)
        self.flat_index.index_copy_(0, slots, new_index.repeat(len(self.lengths)))
        if self.flat_valid is not None:
            self.flat_valid.index_fill_(0, slots, True)
        if self.flat_bias is not None:
            self.flat_bias.index_fill_(0, slots, 0.0)
        self.lengths = [length + n for length in self.lengths]
        self._new_slots = slots

    def _record_new_validity(self, new_valid: Tensor) -> None:
        """Padding among the new tokens (a left-padded batch of questions) stays masked for later queries."""
        if bool(new_valid.all()):
            return
        if self.flat_valid is None:
            self.flat_valid = torch.ones(self.keys.shape[0], dtype=torch.bool, device=self.keys.device)
        per_segment = new_valid.repeat_interleave(self.n_kv_heads, 0).reshape(-1)  # (row, head, new)
        self.flat_valid[self._new_slots] = per_segment

    def _copy_segments(self, order: list[int], spare: int) -> None:
        """Rebuild the storage with segments ``order`` (indices into the current ones), each with ``spare`` room."""
        lengths = [self.lengths[s] for s in order]
        caps = [length + spare for length in lengths]
        starts = _starts(caps)
        total = sum(caps)
        device = self.keys.device
        src = torch.cat([torch.arange(self.starts[s], self.starts[s] + self.lengths[s]) for s in order])
        dst = torch.cat([torch.arange(st, st + length) for st, length in zip(starts, lengths, strict=True)])
        src, dst = src.to(device), dst.to(device)

        def moved(flat: Tensor | None, fill) -> Tensor | None:
            if flat is None:
                return None
            out = torch.full((total, *flat.shape[1:]), fill, dtype=flat.dtype, device=device)
            out[dst] = flat[src]
            return out

        self.keys, self.values = moved(self.keys, 0), moved(self.values, 0)
        self.flat_index = moved(self.flat_index, -1)
        self.flat_valid = moved(self.flat_valid, True)
        self.flat_bias = moved(self.flat_bias, 0.0)
        self.starts, self.lengths, self.caps = starts, lengths, caps
        self.exclusive = True

    def _regrow(self, n: int) -> None:
        self._copy_segments(list(range(len(self.lengths))), n + self.grow)

    def _select_rows(self, rows: list[int]) -> None:
        h = self.n_kv_heads
        self._copy_segments([row * h + head for row in rows for head in range(h)], 0)
        self.batch = len(rows)


def _starts(caps: list[int]) -> list[int]:
    out, at = [], 0
    for c in caps:
        out.append(at)
        at += c
    return out
