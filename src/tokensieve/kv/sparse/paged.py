"""Any sparse decoder read in whole pages, as a paged engine's attention kernel reads a block table.

``PagedRead(inner, page=16, layout="layer")`` lets ``inner`` score the slots as it always does, then reads
the best ``max(1, k // page)`` pages by the max of their slots' scores (over every KV head too under the
layer layout: one block list per layer, what vLLM / SGLang page tables hold; per KV head under the head
layout: a per-head block index). Pages holding a protected slot (sinks, recent window) come first. A page
is read whole or not at all; protected slots are read regardless (the layer's rule).

Which decoders need which (see docs/serving.md): TokenSelect and TidalDecode already pick one slot set per
layer, so pages of their choice map onto a page table unchanged; Quest, Double Sparsity, FASA, HISA and
Token Sparse choose per KV head, so read at their native granularity they need a per-head index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from tokensieve.core.ops.select import protection_mask
from tokensieve.kv.sparse.base import Index, SelectInputs, Selection, SparseMethod

# decoders whose choice is one slot set for every KV head of a layer (a layer-level page table suffices)
SHARED_ACROSS_HEADS = frozenset({"tokenselect", "tidal"})


@dataclass
class PagedRead(SparseMethod):
    id: ClassVar[str] = "paged"
    paper: ClassVar[str] = "(page-granular reading of another decoder)"
    rule: ClassVar[str] = "inner decoder's slot scores -> page max -> read the top k // page pages whole"

    inner: SparseMethod = field(default=None)  # type: ignore[assignment]
    page: int = 16
    layout: str = "layer"

    def __post_init__(self) -> None:
        if self.inner is None or self.layout not in ("layer", "head") or self.page < 1:
            raise ValueError("PagedRead needs an inner decoder, page >= 1 and layout 'layer' or 'head'")

    def setup(self, model, tokenizer=None) -> None:
        self.inner.setup(model, tokenizer)

    def protected(self, k: int) -> tuple[int, int]:
        return self.inner.protected(k)

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        return self.inner.build_index(keys, valid, layer)

    def extend_index(self, index: Index, keys: Tensor, valid: Tensor | None, n_new: int, layer: int) -> Index:
        return self.inner.extend_index(index, keys, valid, n_new, layer)

    def select(self, x: SelectInputs) -> Selection:
        sel = self.inner.select(x)
        if sel.scores is None:
            return sel
        b, s = x.keys.shape[0], x.keys.shape[2]
        scores = sel.scores.float().expand(b, -1, s).nan_to_num(nan=float("-inf"))
        if sel.keep is not None:
            scores = scores.masked_fill(~sel.keep.expand_as(scores), float("-inf"))
        if x.valid is not None:
            scores = scores.masked_fill(~x.valid[:, None], float("-inf"))
        if self.layout == "layer":
            scores = scores.amax(1, keepdim=True)
        n_pages = -(-s // self.page)
        pad = n_pages * self.page - s
        paged = torch.nn.functional.pad(scores, (0, pad), value=float("-inf")).view(*scores.shape[:2], n_pages, -1)
        page_score = paged.amax(-1)
        protect = protection_mask(x.valid, b, s, *self.inner.protected(x.k), scores.device)
        guarded = torch.nn.functional.pad(protect, (0, pad)).view(b, 1, n_pages, -1).any(-1)
        page_score = page_score.masked_fill(guarded, float("inf"))
        top = page_score.topk(min(n_pages, max(1, x.k // self.page)), dim=-1).indices
        chosen = torch.zeros_like(page_score, dtype=torch.bool).scatter_(-1, top, True)
        keep = chosen.repeat_interleave(self.page, -1)[..., :s]
        if x.valid is not None:
            keep &= x.valid[:, None]
        return Selection(keep.float(), sel.scoring_read, keep=keep, index=sel.index)
