"""A cache layer that receives tokens at arbitrary positions: pruned prefills and revived tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.kv.cache import SieveLayer


class PrunedLayer(SieveLayer):
    """A ``SieveLayer`` told the true position of each incoming row (``rows``, set by the pruning engine
    before the layer runs). Contiguous new positions take the ordinary path (bit-identical outputs); a
    pruned prefill stores only the surviving positions; revived tokens are appended after newer ones, so
    their attention is masked by position (a revived token sees only keys at or before its own position)."""

    def __init__(self, layer_idx: int = 0) -> None:
        super().__init__(layer_idx)
        self.rows: Tensor | None = None

    def _contiguous(self, n: int) -> bool:
        if self.rows is None:
            return True
        start = self.cumulative_length
        return self.rows.numel() == n and bool(
            (self.rows == torch.arange(start, start + n, device=self.rows.device)).all()
        )

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        n = key_states.shape[-2]
        if self._contiguous(n):
            return super().update(key_states, value_states)
        before = self.n_held
        keys, values = compat.dynamic_update(self, key_states, value_states)
        b, h = keys.shape[:2]
        old = self.token_index if self.token_index is not None else torch.arange(before).expand(b, h, before)
        self.token_index = torch.cat([old, self.rows.to(keys.device).expand(b, h, n)], -1)
        self.cumulative_length = max(self.cumulative_length, int(self.rows.max()) + 1)
        hooks.bind(self)
        return keys, values

    def attention_mask(self, q_len: int, mask: Tensor | None) -> Tensor | None:
        past = self.n_held - q_len
        if (
            self.rows is None
            or past == 0
            or self.token_index is None
            or bool((self.token_index[0, 0, :past] < self.rows.min()).all())
        ):
            return super().attention_mask(q_len, mask)  # every held key precedes every row: the usual mask
        keys_at = self.token_index[:, 0]  # [B, S]: every head holds the same positions after pruning
        return (keys_at[:, None, :] <= self.rows.to(keys_at.device)[None, :, None]).unsqueeze(1)

    def reset(self) -> None:
        super().reset()
        self.rows = None
