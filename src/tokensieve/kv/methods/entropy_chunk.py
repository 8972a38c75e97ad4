from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.heads import evict_layer
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def chunk_priority(s: Tensor, valid: Tensor | None, size: int, spiky_top: int, gate: float) -> Tensor:
    """``[B, H, T]`` -> a score whose top k spends k as the rule does: chunks (``size`` slots) by mean score, best
    first; a chunk whose mean is above the median chunk's and whose score entropy is below ``gate`` x log(size)
    ("spiky") offers only its ``spiky_top`` best tokens, any other chunk all of its tokens."""
    b, h, t = s.shape
    pad = (-t) % size
    real = torch.ones(b, t, dtype=torch.bool, device=s.device) if valid is None else valid
    r = F.pad(real, (0, pad))[:, None].expand(b, h, -1).reshape(b, h, -1, size)
    x = F.pad(s.float(), (0, pad)).reshape(b, h, -1, size)
    n = r.sum(-1).clamp(min=1)
    mean = (x * r).sum(-1) / n
    mean = mean.masked_fill(r.sum(-1) == 0, float("-inf"))
    low = x.masked_fill(~r, float("inf")).amin(-1, keepdim=True)
    p = ((x - low).clamp(min=0) + 1e-6) * r
    p = p / p.sum(-1, keepdim=True)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(-1)
    spiky = (entropy < gate * math.log(size)) & (mean >= mean.median(-1, keepdim=True).values)
    c_rank = mean.argsort(dim=-1, descending=True, stable=True).argsort(-1)  # 0 = the best chunk
    t_rank = x.masked_fill(~r, float("-inf")).argsort(dim=-1, descending=True, stable=True).argsort(-1)
    offered = r & ~(spiky[..., None] & (t_rank >= spiky_top))
    prio = -(c_rank[..., None] * size + t_rank).float()
    return prio.masked_fill(~offered, float("-inf")).reshape(b, h, -1)[..., :t]


@dataclass
class EntropyChunk(Wrapper):
    """ChunkKV's semantic chunks with an entropy gate, over any score (``base``): chunks of ``size`` tokens ranked
    by their mean score are kept whole, best first, until the budget is spent, except that a high-scoring chunk
    whose scores are concentrated on a few tokens (low entropy) gives only its ``spiky_top`` best tokens, leaving
    the budget for more chunks. The budget's last chunk may be cut (its best tokens first). Each KV head chooses its
    own chunks, and the base's protected tokens (SnapKV's window) are kept apart, the chunks spending the rest.

    kvpress's ``ChunkKVPress`` / ``EntropyGatedChunkKVPress`` differ by two stated rules (checked in
    ``tests/test_bench.py``, docs/kv-breadth.md): one choice per layer for all its heads (the scores summed over
    heads), and the SnapKV window ranked inside the chunk grid (scored max + 1), so a chunk straddling the window is
    kept whole and window tokens in a chunk not chosen are dropped; the gated press also calls a chunk spiky below
    the median chunk's normalised entropy, this rule below ``gate`` (0.8) of the maximum, log(size)."""

    id = "entropy_chunk"
    paper = "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference (2025) + an entropy gate"  # noqa: E501
    rule = "chunks of 10 by mean score, kept whole; a high-score low-entropy chunk gives only its top 4"

    size: int = 10
    spiky_top: int = 4
    gate: float = 0.8

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        prio = chunk_priority(self._inner.score(x), x.valid, self.size, self.spiky_top, self.gate)
        return evict_layer(layer, prio, budget, *self._inner.protected(budget), allocator, inplace)
