from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve.compat import rope_inv_freq
from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import CalibrationError
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.expected_attention import rotate


def query_stats(samples: list[Any], inv_freq: Tensor | None) -> Tensor:
    """``[L, Hkv, G, D, D + 1]`` per layer: the mean (last column) and covariance of the calibration queries, each
    rotated back to position 0 (pre-RoPE) when the model has rotary frequencies."""
    out = []
    for s in samples:
        q = s.queries  # [Hkv, G, n, D]
        if inv_freq is not None:
            q = rotate(q, -(s.rows.float()[:, None] * inv_freq)[None, None])
        mu = q.mean(2)
        dev = q - mu[:, :, None]
        cov = torch.einsum("hgnd,hgne->hgde", dev, dev) / max(1, q.shape[2] - 1)
        out.append(torch.cat([cov, mu[..., None]], -1))
    return torch.stack(out)


@dataclass
class ExpectedAttentionStats(Method):
    """``expected_attention`` with the future queries' mean and covariance per head taken from a calibration
    prefill (1,024 tokens of the learned scorers' corpus, cached per model) instead of the context's last queries:
    the pre-RoPE mean and covariance are rotated to the context's end (``R mu``, ``R S R'``), the mean averaged over
    the next ``horizon`` positions; score ``softmax_j(s mu.k + s^2 k'Sk / 2) x ||v_j||``, GQA-mean."""

    id = "expected_attention_stats"
    paper = "Expected Attention (Devoto et al., 2025), offline query statistics (kvpress ExpectedAttentionStatsPress)"
    rule = "expected_attention with mu/S per head from a calibration corpus, rotated to the context's end"

    sinks: int = 4
    horizon: int = 512
    covariance: bool = True
    calibration_tokens: int = 1024

    def needs(self) -> Needs:
        return Needs()

    def bind(self, model: Any) -> None:
        from tokensieve.kv.cache import CompressibleCache
        from tokensieve.kv.calibration import _tokenizer_for
        from tokensieve.kv.learned import head_calibration

        inv = rope_inv_freq(model)
        self._inv_freq = inv
        self._stats = head_calibration("expected_attention_stats", model, _tokenizer_for(model), {},
                                       self.calibration_tokens, lambda s: query_stats(s, inv))  # fmt: skip
        self._rows = {layer.layer_idx: r for r, layer in enumerate(CompressibleCache(model.config).sieve_layers)}

    def score(self, x: ScoreInputs) -> Tensor:
        stats = getattr(self, "_stats", None)
        if stats is None:
            raise CalibrationError(f"{self.id} needs its calibration: compress through tokensieve.compress")
        st = stats[self._rows[x.layer_idx]].to(x.keys.device)  # [Hkv, G, D, D + 1]
        cov, mu = st[..., :-1], st[..., -1]
        t, inv = x.keys.shape[2], self._inv_freq
        if inv is not None:
            at_t = (t * inv).to(mu.device)
            mu = rotate(mu, at_t)
            cov = rotate(rotate(cov, at_t).transpose(-1, -2), at_t)  # R S R'
            if self.horizon > 0:  # the mean rotation over the next positions t .. t+horizon-1
                angles = torch.arange(self.horizon).float()[:, None] * inv
                avg = lambda f: f(angles).mean(0).repeat(2).to(mu.device)  # noqa: E731
                a, b = mu.chunk(2, -1)
                mu = mu * avg(torch.cos) + torch.cat([-b, a], -1) * avg(torch.sin)
        k = x.keys.float()
        s = x.obs.scaling if x.obs is not None else k.shape[-1] ** -0.5
        logit = torch.einsum("hgd,bhtd->bhgt", mu, k) * s
        if self.covariance:
            logit = logit + 0.5 * s * s * torch.einsum("bhtd,hgde,bhte->bhgt", k, cov, k)
        if x.valid is not None:
            logit = logit.masked_fill(~x.valid[:, None, None, :], float("-inf"))
        return logit.softmax(-1).nan_to_num(0.0).mean(2) * x.values.float().norm(dim=-1)
