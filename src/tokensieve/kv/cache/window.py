"""A sliding-window layer compressed inside its window: of the context it keeps the last ``n`` tokens; tokens that
come after (the question, the answer) are appended and slide out under the model's own window, as before.

Hybrid models (Gemma 2/3, Mistral's sliding windows) hold most of their cache in such layers; a byte budget on
the whole cache has to act on them too. The window stays exact: a query at position ``p`` sees the held slots
``p - window < j <= p`` (transformers' sliding rule), row by row inside a block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.kv.cache.layers import SieveLayer


class WindowLayer(SieveLayer):
    """Keys and values of the context's last tokens and of what came after, within the model's window."""

    is_sliding = True  # transformers builds the sliding masks from the first layer that says so

    def __init__(self, layer_idx: int, window: int) -> None:
        super().__init__(layer_idx)
        self.window = window

    @classmethod
    def from_sliding(cls, layer, layer_idx: int, keep: int, context_mask: Tensor | None = None) -> WindowLayer:
        """The last ``keep`` (>= 1) slots of a sliding layer; ``context_mask [B, T]`` marks the context's padding."""
        held, seen = layer.keys.shape[-2], layer.cumulative_length
        keep = max(1, min(keep, held))
        out = cls(layer_idx, layer.sliding_window)
        out.keys, out.values = layer.keys[..., -keep:, :].clone(), layer.values[..., -keep:, :].clone()
        compat.mark_initialized(out, out.keys)
        out.cumulative_length = seen
        b, h = out.keys.shape[:2]
        out.token_index = torch.arange(seen - keep, seen, device=out.keys.device).expand(b, h, keep)
        if context_mask is not None and context_mask.shape[-1] == seen:
            valid = context_mask[:, -keep:].bool().to(out.keys.device)
            out.valid = None if bool(valid.all()) else valid
        return out

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        # slots no query from now on can see (j <= p - window for every p >= the next position) go first
        oldest = self.cumulative_length - self.window
        if self.token_index is not None and self.n_held and int(self.token_index[0, 0, 0]) <= oldest:
            drop = int((self.token_index[0, 0] <= oldest).sum())
            self.keys, self.values = self.keys[..., drop:, :], self.values[..., drop:, :]
            self.token_index = self.token_index[..., drop:]
            self.valid = None if self.valid is None else self.valid[:, drop:]
        return super().update(key_states, value_states, *args, **kwargs)

    @property
    def evicted(self) -> bool:
        return True  # the model's sliding mask is for the config's window, never this one

    def attention_mask(self, q_len: int, mask: Tensor | None) -> Tensor | None:
        base = super().attention_mask(q_len, mask)
        b = self.keys.shape[0]
        if base is None:
            base = torch.ones(b, 1, q_len, self.n_held, dtype=torch.bool, device=self.keys.device)
        rows = torch.arange(self.cumulative_length - q_len, self.cumulative_length, device=self.keys.device)
        cols = self.token_index[:, 0]  # [B, held]: every head holds the same positions
        band = (rows[None, :, None] - cols[:, None, :]) < self.window
        return base & band[:, None]

    def evict(self, idx: Tensor, inplace: bool = True) -> SieveLayer:
        raise NotImplementedError("a window layer keeps its last tokens; it is not evicted by score")
