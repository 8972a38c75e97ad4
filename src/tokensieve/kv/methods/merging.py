from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import select
from tokensieve.kv.heads import equal_head_budget
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from torch import Tensor

    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def merge_values(keys: Tensor, values: Tensor, kept: Tensor, valid: Tensor | None) -> Tensor:
    """Values of the kept slots ``kept [B, H, k]`` after every evicted real token folded its value into the kept
    token of its head with the most similar key: weight ``w = max(cos, 0) x |v_e| / (|v_e| + |v_t|)``, and the kept
    value becomes ``(v_t + sum w v_e) / (1 + sum w)``. Keys are unchanged."""
    b, h, t, d = keys.shape
    k, v = keys.float(), values.float()
    gather = kept[..., None].expand(-1, -1, -1, d)
    kk, vk = k.gather(2, gather), v.gather(2, gather)
    sim = F.normalize(k, dim=-1) @ F.normalize(kk, dim=-1).transpose(-1, -2)  # [B, H, T, k]
    best, into = sim.max(-1)
    evicted = torch.ones(b, h, t, dtype=torch.bool, device=k.device).scatter_(2, kept, False)
    if valid is not None:
        evicted &= valid[:, None]
    ve, vt = v.norm(dim=-1), vk.norm(dim=-1).gather(2, into)
    w = best.clamp(min=0) * ve / (ve + vt).clamp(min=1e-12) * evicted
    num = vk.scatter_add(2, into[..., None].expand(-1, -1, -1, d), w[..., None] * v)
    den = torch.ones_like(vk[..., 0]).scatter_add(2, into, w)
    return (num / den[..., None]).to(values.dtype)


@dataclass
class Merging(Wrapper):
    """Value merging after eviction by any score (``base``), the ToMe / D2O idea without touching keys: each
    evicted token's value is folded into the value of the kept token its key is most similar to (cosine), weighed
    by that similarity and by its value's share of the pair's norms, so the information it carried stays in the
    output. Every head keeps as many tokens (dense layer): uniform or pyramid budgets."""

    id = "merging"
    paper = "value merging after eviction (ToMe, Bolya et al. 2023; D2O, Wan et al. 2024)"
    rule = "evicted v folds into the most similar kept key's v, weight max(cos,0)|v_e|/(|v_e|+|v_t|); keys unchanged"

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        s = self._inner.score(x)
        sinks, window = self._inner.protected(budget)
        k = equal_head_budget(s, budget, x.valid, sinks, window, allocator, self.id)
        kept = select(s, k, x.valid, sinks, window)
        merged = merge_values(layer.keys, layer.values, kept, x.valid)
        out = layer.evict(kept, inplace=inplace)
        out.values = merged
        return out
