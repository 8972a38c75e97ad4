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
    """Anchor-weighted value novelty. The anchor is where future queries will look: the mean of the last
    ``queries`` prompt queries taken back to pre-RoPE (rotated by minus their positions; averaged over the GQA
    group too), turned by the mean RoPE rotation over the next ``horizon`` positions. Each key's affinity
    ``w_i = exp(sharp (cos(anchor, k_i) - max_j cos))``; the score ``w_i v_i' A^-1 v_i`` with
    ``A = I + sum_j w_j v_j v_j'``: a token counts when the anchor points at it and its value is not already
    covered by the other weighted values. The first 4 tokens are protected."""

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
        pre = move(q.reshape(b, h * g, n, d), -rows, inv).reshape(b, h, g, n, d)
        t = x.keys.shape[2]
        anchor = mean_rotation(pre.mean((2, 3)), t, self.horizon, inv)  # [B, Hkv, D]
        cos = F.cosine_similarity(x.keys.float(), anchor[:, :, None], dim=-1)  # [B, Hkv, T]
        if x.valid is not None:
            cos = cos.masked_fill(~x.valid[:, None], float("-inf"))
        w = torch.exp(self.sharp * (cos - cos.amax(-1, keepdim=True)))  # padding: exp(-inf) = 0
        v = x.values.float()
        a = torch.eye(d, device=v.device) + torch.einsum("bht,bhtd,bhte->bhde", w, v, v)
        solved = torch.linalg.solve(a, v.transpose(-1, -2)).transpose(-1, -2)  # A^-1 v_i
        return w * (v * solved).sum(-1)
