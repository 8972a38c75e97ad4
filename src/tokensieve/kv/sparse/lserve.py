from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.errors import ParameterError
from tokensieve.kv.sparse.base import Index, SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.select import page_minmax, pages_to_tokens, quest_bounds


def streaming_heads(n_kv_heads: int, share: float) -> Tensor:
    """Bool ``[Hkv]``: which KV heads stream, ``round(share x Hkv)`` of them, spread evenly over the heads."""
    n = round(share * n_kv_heads)
    out = torch.zeros(n_kv_heads, dtype=torch.bool)
    if n:
        out[torch.linspace(0, n_kv_heads - 1, n).round().long()] = True
    return out


@dataclass
class LServe(SparseMethod):
    """LServe's unified sparse decoding: a ``streaming`` share of the KV heads read only their sinks and the most
    recent slots (StreamingLLM heads: their scores are recency); the other heads select pages hierarchically:
    Quest bounds on small logical pages of ``logical`` slots, a physical page of ``page`` slots scored by the
    best of its logical pages, and the top physical pages read whole. Deviation, stated: LServe picks the
    streaming heads with DuoAttention's calibrated gates and reuses a page selection for a few steps; here the
    streaming heads are a fixed, evenly spread share and pages are chosen every step."""

    id = "lserve"
    paper = "LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention (Yang et al., 2025)"
    rule = "half the heads streaming (sinks + recent); the rest: top physical pages by max logical-page Quest bound"

    streaming: float = 0.5
    page: int = 64
    logical: int = 16

    def __post_init__(self) -> None:
        if self.page % self.logical:
            raise ParameterError(f"page={self.page} must be a multiple of logical={self.logical}")

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        kmin, kmax = page_minmax(keys.float(), valid, self.logical)
        return {"min": kmin, "max": kmax}

    def select(self, x: SelectInputs) -> Selection:
        b, h, s, _ = x.keys.shape
        bounds = quest_bounds(x.q, x.index["min"], x.index["max"]).sum(2)  # [B, Hkv, logical pages]
        per = self.page // self.logical
        n_phys = math.ceil(bounds.shape[-1] / per)
        padded = torch.full((b, h, n_phys * per), float("-inf"), device=bounds.device)
        padded[..., : bounds.shape[-1]] = bounds
        scores = pages_to_tokens(padded.view(b, h, n_phys, per).amax(-1), self.page, s)
        recency = torch.arange(s, dtype=scores.dtype, device=scores.device).expand(b, h, s)
        stream = streaming_heads(h, self.streaming).to(scores.device)[None, :, None]
        # the paged heads read a min and a max per logical page; streaming heads read nothing to choose
        return Selection(torch.where(stream, recency, scores), 2 / self.logical * float((~stream).float().mean()))
