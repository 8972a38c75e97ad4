from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.kv.sparse import kernels
from tokensieve.kv.sparse.base import Index, SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.select import page_minmax, pages_to_tokens, quest_bounds


@dataclass
class Quest(SparseMethod):
    """Pages of ``page`` slots keep the per-channel min and max of their keys; a page's score is the upper
    bound sum_c max(q_c min_c, q_c max_c) of q.k over it. The bound is per query head; a KV head ranks its
    pages by the bound summed over its GQA group (an upper bound on the group's summed logits), so the
    whole group reads the same pages. Only the pages touched by new tokens are re-summarised."""

    id = "quest"
    paper = "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference (Tang et al., 2024)"
    rule = "page bound sum_c max(q_c*min_c, q_c*max_c); read the top pages"

    page: int = 16

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        kmin, kmax = page_minmax(keys.float(), valid, self.page)
        return {"min": kmin, "max": kmax}

    def extend_index(self, index: Index, keys: Tensor, valid: Tensor | None, n_new: int, layer: int) -> Index:
        first = (keys.shape[2] - n_new) // self.page  # the first page a new slot landed in
        start = first * self.page
        tail = None if valid is None else valid[:, start:]
        kmin, kmax = page_minmax(keys[:, :, start:].float(), tail, self.page)
        return {
            "min": torch.cat([index["min"][:, :, :first], kmin], 2),
            "max": torch.cat([index["max"][:, :, :first], kmax], 2),
        }

    def select(self, x: SelectInputs) -> Selection:
        if x.q.is_cuda and kernels.AVAILABLE:  # one pass over the page summaries
            bounds = kernels.quest_page_scores(x.q, x.index["min"], x.index["max"])
        else:
            bounds = quest_bounds(x.q, x.index["min"], x.index["max"]).sum(2)  # [B, Hkv, P]
        # scoring reads a min and a max vector per page: 2 / page of the keys
        return Selection(pages_to_tokens(bounds, self.page, x.keys.shape[2]), 2 / self.page)
