from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.compat import rope_inv_freq
from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.rope import mean_rotation, move
from tokensieve.kv.methods.base import Method


@dataclass
class Cap(Method):
    """Anchor-weighted value novelty, per query head. A query head's anchor is where its future queries will look:
    the mean of its last ``queries`` prompt queries (those of the context past the sinks) taken back to pre-RoPE
    (rotated by minus their positions), turned by the mean RoPE rotation over the next ``horizon`` positions. Each
    key's affinity ``w_i = exp(sharp (cos(anchor, k_i) - max_j cos))``; the score ``w_i v_i' A^-1 v_i`` with
    ``A = I + sum_j w_j v_j v_j'``, averaged over the query heads that share the key: a token counts when the
    anchor points at it and its value is not already covered by the other weighted values. The first ``sinks``
    tokens are protected (+inf) and left out of the max and of ``A``, as the paper evicts among the others.

    Deliberate deviation: the paper's anchor is the mean of every historical query; this one averages the last
    ``queries`` (32) only, so the prefill keeps a window of queries instead of all of them (kvpress's CapPress
    averages all of them: ``cap:queries=N`` with N >= the context reproduces it, docs/kv-breadth.md)."""

    id = "cap"
    paper = "CapKV (2026): anchor-weighted value leverage for query-agnostic KV eviction"
    rule = "w_i v_i' (I + sum w v v')^-1 v_i, w_i = exp(5 (cos(mu, k_i) - max)), mu: mean query at future RoPE"

    sinks: int = 4
    queries: int = 32
    horizon: int = 512
    sharp: float = 5.0

    def needs(self) -> Needs:
        return Needs(window=self.queries)

    def bind(self, model: Any) -> None:
        self._inv_freq = rope_inv_freq(model)

    def score(self, x: ScoreInputs) -> Tensor:
        obs = x._obs("recent queries")
        inv = getattr(self, "_inv_freq", None)
        q, rows = obs.queries[..., -self.queries :, :].float(), obs.rows[-self.queries :]  # [B, Hkv, G, n, D]
        b, h, g, n, d = q.shape
        t = x.keys.shape[2]
        real = torch.ones(b, t, dtype=torch.bool, device=q.device) if x.valid is None else x.valid
        sink = real & (real.cumsum(-1) <= self.sinks)  # the first `sinks` real tokens
        scored = real & ~sink
        pre = move(q.reshape(b, h * g, n, d), -rows, inv).reshape(b, h, g, n, d)
        use = scored[:, rows.to(q.device)].float()[:, None, None, :, None]  # padding and sink queries: not history
        mean = (pre * use).sum(3) / use.sum(3).clamp(min=1)  # [B, Hkv, G, D]: one anchor per query head
        anchor = mean_rotation(mean, t, self.horizon, inv)
        cos = F.cosine_similarity(x.keys.float()[:, :, None], anchor[..., None, :], dim=-1)  # [B, Hkv, G, T]
        cos = cos.masked_fill(~scored[:, None, None], float("-inf"))
        w = torch.exp(self.sharp * (cos - cos.amax(-1, keepdim=True)))  # padding and sinks: exp(-inf) = 0
        v = x.values.float()
        a = torch.eye(d, device=v.device) + torch.einsum("bhgt,bhtd,bhte->bhgde", w, v, v)
        solved = torch.linalg.solve(a, v.transpose(-1, -2)[:, :, None].expand(-1, -1, g, -1, -1))  # A^-1 v_i
        s = (w * (v[:, :, None] * solved.transpose(-1, -2)).sum(-1)).mean(2)
        return s.masked_fill(sink[:, None], float("inf"))
