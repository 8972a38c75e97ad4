from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve.compat import rope_inv_freq
from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.rope import rotate
from tokensieve.kv.methods.base import Method


@dataclass
class ExpectedAttention(Method):
    """Attention expected from future queries modelled as Gaussian: the last ``queries`` prompt queries (after RoPE)
    are rotated forward to the context's end, giving their mean and covariance; the mean is further averaged
    over the rotations of the next ``horizon`` positions (the future queries' positions). With q ~ N(mu, S), the
    expected unnormalised attention is E[exp(q.k s)] = exp(s mu.k + s^2 k'Sk / 2), s the attention scale;
    normalised over the keys, averaged over each GQA group, times ||v_j||. Without rotary frequencies (a model
    without RoPE) the queries are used as they are."""

    id = "expected_attention"
    paper = "Expected Attention: KV Cache Compression by Estimating Attention from Future Queries Distribution (Devoto et al., 2025)"  # noqa: E501
    rule = "softmax_j(s mu.k_j + s^2 k_j' S k_j / 2) x ||v_j||, mu/S of recent queries rotated to future positions"

    sinks: int = 4
    queries: int = 64
    horizon: int = 512
    covariance: bool = True

    def needs(self) -> Needs:
        return Needs(window=self.queries)

    def bind(self, model: Any) -> None:
        self._inv_freq = rope_inv_freq(model)

    def score(self, x: ScoreInputs) -> Tensor:
        obs = x._obs("recent queries")
        # a shared prefill may have observed more rows than this method asks for: use only its own last `queries`
        q, rows = obs.queries[..., -self.queries :, :].float(), obs.rows[-self.queries :]  # [B, Hkv, G, n, D]
        t, inv = x.keys.shape[2], getattr(self, "_inv_freq", None)
        if inv is not None:
            q = rotate(q, ((t - rows).float()[:, None] * inv)[None, None, None].to(q.device))  # to position t
        mu = q.mean(3)  # [B, Hkv, G, D]
        if inv is not None and self.horizon > 0:  # the mean rotation over the next positions t .. t+horizon-1
            angles = torch.arange(self.horizon).float()[:, None] * inv
            avg = lambda f: f(angles).mean(0).repeat(2).to(q.device)  # noqa: E731
            a, b = mu.chunk(2, -1)
            mu = mu * avg(torch.cos) + torch.cat([-b, a], -1) * avg(torch.sin)
        k, s = x.keys.float(), obs.scaling
        logit = torch.einsum("bhgd,bhtd->bhgt", mu, k) * s
        if self.covariance and q.shape[3] > 1:
            dev = q - q.mean(3, keepdim=True)
            cov = torch.einsum("bhgnd,bhgne->bhgde", dev, dev) / (q.shape[3] - 1)
            logit = logit + 0.5 * s * s * torch.einsum("bhtd,bhgde,bhte->bhgt", k, cov, k)
        if x.valid is not None:
            logit = logit.masked_fill(~x.valid[:, None, None, :], float("-inf"))
        return logit.softmax(-1).nan_to_num(0.0).mean(2) * x.values.float().norm(dim=-1)
