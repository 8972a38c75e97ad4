from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tokensieve.kv.sparse.base import SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.select import logits, mask_padding


@dataclass
class TokenSelect(SparseMethod):
    """Token-level q.k per query head, a softmax per head, then a soft vote (the sum of every head's
    probabilities) ranks one token set shared by all heads of the layer. The selection cache: while the
    new query stays close to the one that last voted (cosine of the flattened queries above ``threshold``
    for every batch row), the last vote is reused and no key is read to score. A reused vote gives the
    slots appended since then a score of 0; the recent window covers them."""

    id = "tokenselect"
    paper = "TokenSelect: Efficient Long-Context Inference via Dynamic Token-Level KV Cache Selection (Wu et al., 2024)"
    rule = "per-head softmax(q.k), soft vote summed over heads; reuse the selection while queries stay similar"

    threshold: float = 0.9

    def select(self, x: SelectInputs) -> Selection:
        b, _, s, _ = x.keys.shape
        q = x.q.reshape(b, -1)
        last = x.index.get("q")
        if last is not None and bool((F.cosine_similarity(q, last, dim=-1) > self.threshold).all()):
            vote = x.index["vote"]
            vote = torch.cat([vote, vote.new_zeros(b, 1, s - vote.shape[-1])], -1)
            return Selection(vote, 0.0, index={**x.index, "vote": vote})
        probs = torch.softmax(mask_padding(logits(x.q, x.keys.float()).flatten(1, 2), x.valid), -1)
        vote = probs.nan_to_num(0.0).sum(1, keepdim=True)  # [B, 1, S]
        return Selection(vote, 1.0, index={"q": q, "vote": vote})
