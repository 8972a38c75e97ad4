from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import protection_mask
from tokensieve.kv.heads import evict_to_counts
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class SimLayerKV(Method):
    """Lazy layers. A layer whose last prompt token puts more than ``tau`` of its attention (mean over query heads)
    on the first ``sinks`` and last ``recent`` tokens is "lazy": it reads only those, so it keeps only sinks and
    recent tokens. Other layers keep everything. Deviation: a lazy layer keeps the plan's budget (``sinks`` first
    tokens plus the most recent ones), not a fixed window, so ``keep`` sizes the lazy layers; the share of the
    cache held is an output (``Stats.kv_bytes``). Judged per row. ``tau`` is per model in the paper (0.9 here,
    not yet calibrated on a validation split)."""

    id = "simlayerkv"
    paper = "SimLayerKV: A Simple Framework for Layer-Level KV Cache Reduction (Zhang et al., 2024)"
    rule = "last query's mass on first 4 + last 1024 tokens > tau: the layer keeps sinks + recent; else all"

    sinks: int = 4
    recent: int = 1024
    tau: float = 0.9

    def needs(self) -> Needs:
        return Needs(window=1)

    def lazy(self, x: ScoreInputs) -> Tensor:
        """[B] bool: the layer is lazy for the row."""
        b, _, t = x.shape
        probs = x.window_probs(1)[:, :, :, -1]  # [B, Hkv, G, T]
        near = protection_mask(x.valid, b, t, self.sinks, self.recent, probs.device)
        return (probs * near[:, None, None]).sum(-1).mean((1, 2)) > self.tau

    def score(self, x: ScoreInputs) -> Tensor:
        """Recency, sinks first: the order a lazy layer keeps (a non-lazy layer keeps all)."""
        b, h, t = x.shape
        s = torch.arange(t, dtype=torch.float32, device=x.keys.device).expand(b, h, t).clone()
        return s.masked_fill(protection_mask(x.valid, b, t, self.sinks, 0, s.device)[:, None], float("inf"))

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        b, h, t = x.shape
        real = torch.full((b,), t) if x.valid is None else x.valid.sum(-1).cpu()
        counts = torch.where(self.lazy(x).cpu(), real.clamp(max=budget), real)
        return evict_to_counts(layer, self.score(x), counts[:, None].expand(b, h), inplace)
