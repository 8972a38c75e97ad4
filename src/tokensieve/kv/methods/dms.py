from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import protection_mask
from tokensieve.errors import check_choice
from tokensieve.kv.heads import evict_to_counts
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def normalised(s: Tensor, valid: Tensor | None) -> Tensor:
    """Each head's score rescaled over its real tokens so that the minimum is 0 and the mean is 1."""
    s = s.float()
    real = torch.ones(s.shape[0], s.shape[-1], dtype=torch.bool, device=s.device) if valid is None else valid
    r = real[:, None].expand_as(s)
    lo = s.masked_fill(~r, float("inf")).amin(-1, keepdim=True)
    mean = ((s - lo) * r).sum(-1, keepdim=True) / r.sum(-1, keepdim=True).clamp(min=1)
    return (s - lo) / mean.clamp(min=1e-12)


@dataclass
class DMS(Wrapper):
    """DMS's inference rule as a threshold on any score (``base``): tokens wait in a per-layer queue until more than
    ``recent`` are unjudged; the oldest are then judged once, per head, and evicted iff their score is below
    ``tau``. At the end of a prefill every token but the newest ``recent`` has been judged exactly once, so a head
    keeps ``{j : s_j >= tau} + the newest recent``. The share kept is an output, not an input: the plan's ``keep``
    is ignored (pass ``keep=1.0``; ``Stats.kv_bytes`` reports what was held). ``normalize="mean"`` (default) puts
    every head's score on one scale first (min 0, mean 1), so ``tau=1`` keeps the above-average tokens; ``"none"``
    thresholds the raw score (a learned scorer's log-importance). Not yet applied while decoding (the decode-time
    queue is not implemented)."""

    id = "dms"
    paper = "Inference-Time Hyper-Scaling with KV Cache Compression (Dynamic Memory Sparsification, NeurIPS 2025)"
    rule = "a queue of unjudged tokens; past the newest 128 each is judged once per head: evicted iff score < tau"
    adaptive: ClassVar[bool] = True  # the ratio is its output: it acts even when the plan keeps everything

    tau: float = 1.0
    recent: int = 128
    normalize: str = "mean"

    def __post_init__(self) -> None:
        check_choice("normalize", self.normalize, ("mean", "none"))
        super().__post_init__()

    def judged(self, x: ScoreInputs) -> Tensor:
        """Bool ``[B, Hkv, T]``: what each head keeps."""
        s = self._inner.score(x).float()
        s = normalised(s, x.valid) if self.normalize == "mean" else s
        b, _, t = s.shape
        recent = protection_mask(x.valid, b, t, 0, self.recent, s.device)[:, None]
        real = recent.new_ones(b, 1, t) if x.valid is None else x.valid[:, None]
        return ((s >= self.tau) & real) | recent

    def score(self, x: ScoreInputs) -> Tensor:
        return self.judged(x).float()

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        keep = self.judged(x)  # the top count[b, h] of a 0/1 score are exactly the kept tokens
        return evict_to_counts(layer, keep.float(), keep.sum(-1).cpu(), inplace)
