"""LU-KV: budgets from per-head curves of future utility, allocated greedily by marginal gain."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from tokensieve.errors import CalibrationError
from tokensieve.kv.budget.base import Allocator, _round_capped

COMMAND = "tokensieve calibrate --model <this model> --learned lukv"


def utility_curves(samples: list[Any], points: int, chunk: int = 128) -> Tensor:
    """``[L, Hkv, points + 1]``: per KV head the upper concave hull of U(f), the share of the attention that the
    calibration text's second half pays to its first half which lands on the first half's top ``f`` tokens (ranked
    by that attention), at f = 0, 1/points, .., 1. Queries in chunks (never the whole T x T)."""
    out = []
    for s in samples:
        q, k = s.queries.float(), s.keys.float()  # [Hkv, G, n, D] (rows 0..n-1), [Hkv, T, D]
        t = k.shape[1]
        half = t // 2
        mass = k.new_zeros(k.shape[0], half)
        for a in range(half, t, chunk):
            rows = torch.arange(a, min(a + chunk, t))
            logits = torch.einsum("hgqd,htd->hgqt", q[:, :, rows], k) * s.scaling
            logits = logits.masked_fill(torch.arange(t)[None, :] > rows[:, None], float("-inf"))
            mass += logits.softmax(-1)[..., :half].sum((1, 2))
        ranked = mass.sort(-1, descending=True).values.cumsum(-1) / mass.sum(-1, keepdim=True).clamp(min=1e-12)
        at = [max(1, round(i * half / points)) - 1 for i in range(1, points + 1)]  # top ceil(f x half) tokens
        u = torch.cat([ranked.new_zeros(ranked.shape[0], 1), ranked[:, at]], -1)
        out.append(concave_hull(u))
    return torch.stack(out)


def concave_hull(u: Tensor) -> Tensor:
    """The upper concave hull of ``u [..., P]`` sampled at equal steps, at the same points."""
    flat = u.reshape(-1, u.shape[-1]).double()
    out = torch.empty_like(flat)
    for r, y in enumerate(flat.tolist()):
        hull: list[int] = []
        for i in range(len(y)):  # Andrew's monotone chain, upper half
            while len(hull) >= 2 and (y[hull[-1]] - y[hull[-2]]) * (i - hull[-2]) <= (y[i] - y[hull[-2]]) * (
                hull[-1] - hull[-2]
            ):
                hull.pop()
            hull.append(i)
        for a, b in pairwise(hull):
            for i in range(a, b + 1):
                out[r, i] = y[a] + (y[b] - y[a]) * (i - a) / (b - a)
    return out.view_as(u).to(u.dtype)


@dataclass
class LUKV(Allocator):
    """Each (layer, KV head) has a concave curve of utility against its share of the tokens (calibrated once per
    model by ``tokensieve calibrate --learned lukv`` on ``calibration_tokens`` of the offline corpus, stored; a model
    without it is a one-line error naming the command). The whole cache's budget is spent ``points`` steps at a time
    on the steps of greatest marginal utility over every head (greedy = optimal on concave curves); a layer keeps
    its heads' mean, each head its own share (ragged), tokens ranked by the method's score. Deviation: the curves
    rank tokens by the future attention itself (an upper bound of any score's selection)."""

    id = "lukv"
    paper = "LU-KV: future-utility budget curves per head (2026)"
    rule = "per-head concave utility curves (calibrated); budget spent greedily by marginal gain over all heads"
    by_layer = True

    points: int = 16
    calibration_tokens: int = 1024

    def calibrate(self, model: Any, tokenizer: Any) -> Tensor:
        return self._load(model, tokenizer, force=True)

    def _load(self, model: Any, tokenizer: Any, force: bool) -> Tensor:
        from tokensieve.kv.cache import CompressibleCache
        from tokensieve.kv.learned import head_calibration

        self._curves = head_calibration("lukv", model, tokenizer, {"points": self.points}, self.calibration_tokens,
                                        lambda s: utility_curves(s, self.points), COMMAND, force)  # fmt: skip
        self._rows = {layer.layer_idx: r for r, layer in enumerate(CompressibleCache(model.config).sieve_layers)}
        return self._curves

    def bind(self, model: Any) -> None:
        self._load(model, None, force=False)

    def shares(self, keep: float) -> Tensor:
        """``[L, Hkv]``: each head's share of its tokens when the cache keeps ``keep`` of them in all."""
        curves = getattr(self, "_curves", None)
        if curves is None:
            raise CalibrationError(f"lukv needs its budget curves: compress through tokensieve.compress ({COMMAND})")
        gain = curves.diff(dim=-1)  # [L, H, points], non-increasing along the curve
        steps = round(keep * gain.numel())
        top = gain.flatten().topk(steps).indices if steps else gain.new_zeros(0, dtype=torch.long)
        count = torch.zeros(gain.numel()).index_add_(0, top, torch.ones(len(top))).view_as(gain).sum(-1)
        return count / self.points

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        share = self.shares(budget / n_tokens)
        raw = (share.mean(-1) * n_tokens).tolist()
        self._heads = {n: h for n, h in enumerate(share.tolist())}
        return _round_capped(raw[:n_layers], budget * n_layers, n_tokens)

    def head_budgets(self, scores: Tensor, budget: int, valid: Tensor | None, sinks: int, window: int,
                     layer_idx: int | None = None) -> Tensor | None:  # fmt: skip
        heads = getattr(self, "_heads", None)
        if layer_idx is None or heads is None:
            return None
        b, h, t = scores.shape
        raw = [s * t for s in heads[self._rows[layer_idx]]]
        n_real = t if valid is None else int(valid.sum(-1).min())
        counts = _round_capped(raw, budget * h, max(1, n_real))
        return torch.tensor(counts, dtype=torch.long, device=scores.device).expand(b, h)
