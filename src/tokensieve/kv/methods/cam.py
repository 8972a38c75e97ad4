from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import select
from tokensieve.kv.heads import equal_head_budget
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def cam_values(s: Tensor, values: Tensor, kept: Tensor, valid: Tensor | None, m: int, draw: Tensor | None) -> Tensor:
    """Values of the kept slots ``kept [B, H, k]`` after each evicted real token e merged into the next ``m`` kept
    tokens after it (fewer at the end): with probability ``p_e = min(1, s_e / mean(s over those m))`` (``draw``:
    uniform numbers ``[B, H, T]``, merged iff below ``p_e``; None merges the expectation ``p_e``), each of them
    gains ``v_e / m``. ``s [B, H, T]`` is the accumulated attention (the base's score)."""
    b, h, t, d = values.shape
    v, s = values.float(), s.float().clamp(min=0)
    k = kept.shape[-1]
    # the first kept slot after each token, k when none: e's targets are kept slots first .. first + m - 1
    first = torch.searchsorted(kept.contiguous(), torch.arange(t, device=kept.device).expand(b, h, t).contiguous())
    last = (first + m).clamp(max=k)
    evicted = torch.ones(b, h, t, dtype=torch.bool, device=v.device).scatter_(2, kept, False)
    if valid is not None:
        evicted &= valid[:, None]
    c = torch.nn.functional.pad(s.gather(2, kept).cumsum(-1), (1, 0))  # [B, H, k + 1]: prefix sums of kept scores
    n = last - first
    mean = (c.gather(2, last) - c.gather(2, first)) / n.clamp(min=1)
    p = (s / mean.clamp(min=1e-12)).clamp(max=1) * ((n > 0) & evicted)
    w = p if draw is None else (draw < p).float() * (p > 0)
    # each e's v_e / m lands in bucket first[e]; kept slot j sums the buckets j - m + 1 .. j (never T x k)
    into = first[..., None].expand(-1, -1, -1, d)
    buckets = v.new_zeros(b, h, k + 1, d).scatter_add_(2, into, (w / m)[..., None] * v)
    cb = torch.nn.functional.pad(buckets[:, :, :k].cumsum(2), (0, 0, 1, 0))  # [B, H, k + 1, D]
    j = torch.arange(k, device=v.device)
    add = cb[:, :, j + 1] - cb[:, :, (j - m + 1).clamp(min=0)]
    return (v.gather(2, kept[..., None].expand(-1, -1, -1, d)) + add).to(values.dtype)


@dataclass
class CaM(Wrapper):
    """CaM's cache merging after eviction by an accumulated-attention score (``base=h2o``): each evicted token's
    value is merged into the values of the next ``merge`` kept tokens after it, with probability its attention
    over their mean attention (capped at 1), each gaining ``v_e / merge``; keys unchanged. ``sample=False`` merges
    the expectation (weight p) instead of a Bernoulli draw (seeded by ``seed``). Deviation: applied once, at the
    prefill's compression; the paper merges at every decode-time eviction too (decode eviction here carries only
    plain eviction). Every head keeps as many tokens (dense layer)."""

    id = "cam"
    paper = "CaM: Cache Merging for Memory-efficient LLMs Inference (Zhang et al., ICML 2024)"
    rule = "evicted v_e merges into the next 32 kept values (+v_e/32) with p = min(1, A_e / their mean A)"

    base: str = "h2o"
    merge: int = 32
    sample: bool = True
    seed: int = 0

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        s = self._inner.score(x)
        sinks, window = self._inner.protected(budget)
        k = equal_head_budget(s, budget, x.valid, sinks, window, allocator, self.id)
        kept = select(s, k, x.valid, sinks, window)
        gen = torch.Generator().manual_seed(self.seed + layer.layer_idx)
        draw = torch.rand(s.shape, generator=gen).to(s.device) if self.sample else None
        merged = cam_values(s, layer.values, kept, x.valid, self.merge, draw)
        out = layer.evict(kept, inplace=inplace)
        out.values = merged
        return out
