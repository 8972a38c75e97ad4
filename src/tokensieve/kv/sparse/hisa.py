from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.kv.sparse.base import Index, SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.select import block_means, hierarchical_scores


@dataclass
class HISA(SparseMethod):
    """Hierarchical index: blocks of ``block`` slots are represented by their mean key; a coarse pass
    scores blocks by q . mean key (summed over the GQA group) and keeps the top ``expand * k / block``
    blocks; a fine pass ranks the tokens of those blocks only by their exact group-mean attention. With
    every block kept it is exactly the flat top-k. Only the blocks touched by new tokens are re-pooled."""

    id = "hisa"
    paper = "HISA: Hierarchical Indexed Sparse Attention (2025)"
    rule = "top blocks by q . mean(block keys), then exact top-k tokens inside them"

    block: int = 64
    expand: float = 2.0

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        return {"means": block_means(keys.float(), valid, self.block)}

    def extend_index(self, index: Index, keys: Tensor, valid: Tensor | None, n_new: int, layer: int) -> Index:
        first = (keys.shape[2] - n_new) // self.block
        start = first * self.block
        tail = block_means(keys[:, :, start:].float(), None if valid is None else valid[:, start:], self.block)
        return {"means": torch.cat([index["means"][:, :, :first], tail], 2)}

    def n_blocks(self, k: int) -> int:
        return max(1, math.ceil(self.expand * k / self.block))

    def select(self, x: SelectInputs) -> Selection:
        s = x.keys.shape[2]
        nb = min(self.n_blocks(x.k), x.index["means"].shape[2])
        scores = hierarchical_scores(x.q, x.keys.float(), x.valid, self.block, nb, x.index["means"])
        # scoring reads one pooled key per block, then the keys of the chosen blocks
        return Selection(scores, (x.index["means"].shape[2] + min(s, nb * self.block)) / s)
