from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.tokens import Tokens, prune


def attention_pagerank(q: Tensor, k: Tensor, scale: float, bias: Tensor | None, iters: int, chunk: int = 64) -> Tensor:
    """Weighted PageRank on the attention graph, per head: s <- A^T s (a token matters when important
    tokens attend to it), from the uniform start, ``iters`` times; then the head mean. [B, H, T, d] -> [B, T].
    A is built in row chunks on the fly: no T x T matrix is held."""
    b, h, t, _ = q.shape
    s = torch.full((b, h, t), 1.0 / t, dtype=q.dtype, device=q.device)
    for _ in range(iters):
        nxt = torch.zeros_like(s)
        for i in range(0, t, chunk):
            logits = (q[:, :, i : i + chunk] @ k.transpose(-1, -2)) * scale
            if bias is not None:
                logits = logits + bias
            nxt += (s[:, :, i : i + chunk, None] * logits.softmax(-1)).sum(2)
        s = nxt / nxt.sum(-1, keepdim=True)
    return s.mean(1)


@dataclass
class ZeroTPrune(VisionMethod):
    """I-stage: importance by weighted PageRank on the attention graph of the layer before the cut.
    S-stage: the ``2 * (N - k)`` least important tokens are prune candidates; each is scored by its
    highest key cosine to a more important token, and the most redundant candidates are pruned. Choice
    (the paper's S-stage details differ): redundancy is measured against every more important token."""

    id = "zero_tprune"
    paper = "Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the Attention Graph (Wang et al., CVPR 2024)"
    rule = "weighted PageRank importance; among the unimportant, prune those most similar to a more important token"
    observe = frozenset({"qk"})

    iters: int = 10

    def reduce(self, x: Tensor, st: Tokens, n: int) -> Tensor:
        q, k = st.qk
        ns = st.n_special
        imp = attention_pagerank(q, k, st.scale, st.bias(), self.iters)[:, ns:]
        keys = F.normalize(st.keys[:, ns:], dim=-1)
        npatch = imp.shape[1]
        rank = imp.argsort(-1, descending=True).argsort(-1)  # 0 = most important
        sim = keys @ keys.transpose(1, 2)
        more_important = rank[:, None, :] < rank[:, :, None]  # [i, j]: j outranks i
        redundancy = sim.masked_fill(~more_important, -2.0).max(-1).values
        pool = rank >= npatch - min(npatch, 2 * (npatch - n))
        drop_score = redundancy.masked_fill(~pool, -3.0)
        keep = drop_score.topk(n, dim=1, largest=False).indices
        return prune(x, st, keep)
