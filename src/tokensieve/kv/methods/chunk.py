from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.heads import evict_layer
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def within_chunk_share(s: Tensor, valid: Tensor | None, size: int) -> Tensor:
    """``[B, H, T]`` -> ``-(r + 1/2) / n``: a token's rank r among its chunk's n real tokens (chunks of ``size``
    real tokens from the row's first), as a share. The top k by it take about k x n / T from every chunk."""
    b, h, t = s.shape
    real = torch.ones(b, t, dtype=torch.bool, device=s.device) if valid is None else valid
    chunk = ((real.long().cumsum(-1) - 1).clamp(min=0) // size)[:, None].expand(b, h, t)
    out = torch.full_like(s, float("-inf"), dtype=torch.float32)
    for c in range(int(chunk.max()) + 1):
        inside = (chunk == c) & real[:, None]
        sc = s.float().masked_fill(~inside, float("-inf"))
        r = sc.argsort(dim=-1, descending=True, stable=True).argsort(-1).float()
        n = inside.sum(-1, keepdim=True).clamp(min=1)
        out = torch.where(inside, -(r + 0.5) / n, out)
    return out


@dataclass
class Chunk(Wrapper):
    """FINCH's chunked reading as a selection rule over any score (``base``): the context is cut into chunks of
    ``size`` tokens, each ranked on its own, and every chunk keeps the same share of its tokens (uniform coverage,
    so no stretch of the document is dropped whole). Protected tokens are the base method's."""

    id = "chunk"
    paper = "FINCH: Prompt-guided Key-Value Cache Compression for Large Language Models (chunked prefill, TACL 2024)"
    rule = "chunks of 1024 scored on their own; each keeps the same share of its tokens"

    size: int = 1024

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        share = within_chunk_share(self._inner.score(x), x.valid, self.size)
        return evict_layer(layer, share, budget, *self._inner.protected(budget), allocator, inplace)
