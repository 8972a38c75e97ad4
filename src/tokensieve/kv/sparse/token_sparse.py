from __future__ import annotations

from dataclasses import dataclass

import torch

from tokensieve.kv.sparse.base import SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.select import group_probs, logits


@dataclass
class TokenSparse(SparseMethod):
    """Per layer and per KV head, a token subset is chosen afresh from the current attention (group mean),
    attended densely, and the output goes back in place: nothing is evicted, so the next layer (and the
    next step) chooses again. The subset is the smallest top set holding ``coverage`` of the head's
    attention mass (the paper's dynamic token coverage), capped at the read budget, so each head reads its
    own number of slots. Scoring reads every key; the saving is in the values and the attention over
    the rest (the paper's main use is prefill, where the queries are compressed too)."""

    id = "token_sparse"
    paper = (
        "Token Sparse Attention: Efficient Long-Context Inference with Interleaved Token Selection (Jo et al., 2026)"
    )
    rule = "per head: smallest top set with `coverage` of the attention mass (<= k); attend; scatter back"

    coverage: float = 0.95

    def select(self, x: SelectInputs) -> Selection:
        probs = group_probs(logits(x.q, x.keys.float()), x.valid)  # [B, Hkv, S]
        ordered, order = probs.sort(-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # mass of the better-ranked slots
        covered = before < self.coverage * probs.sum(-1, keepdim=True)
        keep = torch.zeros_like(covered).scatter_(-1, order, covered)
        return Selection(probs, 1.0, keep=keep)
