"""The response's attention to the prompt at one layer, recorded during an ordinary forward.

tokensieve's registered attention (``core.observe.hooks``) runs SDPA unchanged (the forward is exact) and its
``train`` observer, at the chosen layer, also computes each query row's attention mass on the prompt columns, a
block of query rows at a time: a ``[B, H, rows, T]`` block, never the whole ``T x T`` matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tokensieve.compat import attention_layer_index, sdpa_attention
from tokensieve.core.observe import hooks
from tokensieve.errors import NotPreparedError

NAME = hooks.ATTENTION  # the attention implementation the model runs inside ``prompt_attention``


@dataclass
class PromptAttention:
    layer: int
    prompt_len: Tensor  # [B]
    rows: int = 32
    value: Tensor | None = field(default=None)  # [B, T] after the forward: mass on the prompt, mean over heads

    def record(self, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float) -> None:
        with torch.no_grad():
            _, h, t, _ = query.shape
            k = key.repeat_interleave(h // key.shape[1], dim=1).float()
            cols = torch.arange(key.shape[2], device=key.device)
            prompt = (cols[None, :] < self.prompt_len[:, None].to(key.device))[:, None, None, :]  # [B,1,1,S]
            out = []
            for lo in range(0, t, self.rows):
                s = torch.einsum("bhqd,bhkd->bhqk", query[:, :, lo : lo + self.rows].float(), k) * scaling
                if mask is None:  # causal, no padding
                    q_pos = torch.arange(lo, min(lo + self.rows, t), device=key.device) + key.shape[2] - t
                    s = s.masked_fill(cols[None, :] > q_pos[:, None], float("-inf"))
                elif mask.dtype == torch.bool:
                    s = s.masked_fill(~mask[:, :, lo : lo + self.rows], float("-inf"))
                else:
                    s = s + mask[:, :, lo : lo + self.rows]
                p = s.softmax(-1).nan_to_num(0.0)
                out.append((p * prompt).sum(-1).mean(1))  # [B, rows]
            self.value = torch.cat(out, dim=-1)

    def attend(
        self, module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any
    ):
        """The ``train`` observer: record at ``layer``, then transformers' SDPA unchanged."""
        if attention_layer_index(module) == self.layer:
            self.record(query, key, mask, float(kw.get("scaling") or query.shape[-1] ** -0.5))
        return sdpa_attention(module, query, key, value, mask, **kw)


@contextmanager
def prompt_attention(model: Any, prompt_len: Tensor, layer: int | None = None) -> Iterator[PromptAttention]:
    """Record the attention to the first ``prompt_len[b]`` tokens at ``layer`` (default: the middle one)
    during forwards inside the block; the model's attention implementation is restored on exit."""
    n = model.config.get_text_config(decoder=True).num_hidden_layers
    rec = PromptAttention(n // 2 if layer is None else layer, prompt_len)
    hooks.register()
    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        with hooks.observing("train", rec.attend):
            yield rec
    finally:
        model.set_attn_implementation(before)
    if rec.value is None:
        raise NotPreparedError(
            f"no attention was recorded at layer {rec.layer}: the model's attention modules "
            "carry no layer_idx, so tokensieve.train cannot observe them"
        )
