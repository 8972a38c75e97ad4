from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import protection_mask
from tokensieve.errors import BatchError, ParameterError, check_choice
from tokensieve.kv.heads import evict_to_counts
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step
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
    thresholds the raw score (a learned scorer's log-importance). While decoding (``DecodeCache(model, "dms",
    base="h2o")``, ``tokensieve decode --method dms``) the queue runs on the base's decode-time score: after every
    forward the unjudged tokens past the newest ``recent`` are judged once and never again. Deviation there: a token is
    judged by its score's mean over the KV heads (normalised per head over the held slots), so every head keeps the
    same tokens and the layer stays dense (the prefill's per-head judgment leaves a ragged layer)."""

    id = "dms"
    paper = "Inference-Time Hyper-Scaling with KV Cache Compression (Dynamic Memory Sparsification, NeurIPS 2025)"
    rule = "a queue of unjudged tokens; past the newest 128 each is judged once per head: evicted iff score < tau"
    adaptive: ClassVar[bool] = True  # the ratio is its output: it acts even when the plan keeps everything
    decode_share: ClassVar[bool] = True  # while decoding the share kept is its output

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

    def decode_rule(self) -> DecodeRule:
        inner = self._inner.decode_rule()
        if inner is None:
            raise ParameterError(f"dms while decoding needs a base with a decode-time score, not {self.base!r}: "
                                 "one `tokensieve methods` marks '+ decode eviction' (h2o, tova, ...)")  # fmt: skip
        return Threshold(inner, self.tau, self.recent, self.normalize)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        keep = self.judged(x)  # the top count[b, h] of a 0/1 score are exactly the kept tokens
        return evict_to_counts(layer, keep.float(), keep.sum(-1).cpu(), inplace)


@dataclass
class Threshold(DecodeRule):
    """DMS's queue while decoding, over another rule's running score: ``judged [B, 1, S]`` marks the slots already
    judged (new slots arrive unjudged). After a forward, every unjudged slot but the newest ``recent`` is judged once:
    kept iff the heads' mean (normalised) score reaches ``tau``."""

    inner: DecodeRule
    tau: float
    recent: int
    normalize: str
    decides: ClassVar[bool] = True

    def needs(self):
        return self.inner.needs()

    def init(self, x: ScoreInputs) -> State:
        state = self.inner.init(x)
        return {**state, "judged": x.keys.new_zeros(x.keys.shape[0], 1, x.keys.shape[2], dtype=torch.float)}

    def update(self, state: State, step: Step) -> State:
        judged = state["judged"]
        return {**self.inner.update({k: v for k, v in state.items() if k != "judged"}, step), "judged": judged}

    def score(self, state: State) -> Tensor:
        return self.inner.score({k: v for k, v in state.items() if k != "judged"})

    def keep(self, layer: Any, state: State, new: int) -> tuple[State, Tensor | None]:
        b, h, n = layer.keys.shape[:3]
        real = torch.ones(b, n, dtype=torch.bool, device=layer.keys.device) if layer.valid is None else layer.valid
        waiting = (state["judged"][:, 0] == 0) & real
        waiting[:, max(0, n - self.recent) :] = False  # the newest `recent` wait
        if not bool(waiting.any()):
            return state, None
        s = self.score(state).float().expand(b, h, n)
        s = (normalised(s, layer.valid) if self.normalize == "mean" else s).mean(1)  # [B, S]
        keep = ~waiting | (s >= self.tau)  # padding never waits: it stays, masked
        counts = keep.sum(-1)
        if bool((counts != counts[0]).any()):
            raise BatchError("dms while decoding keeps a different count per row: decode one sequence at a time")
        state = {**state, "judged": state["judged"] + waiting[:, None].float()}
        if bool(keep.all()):
            return state, None
        idx = keep[0].nonzero().flatten() if b == 1 else torch.stack([r.nonzero().flatten() for r in keep])
        return state, idx.view(b, 1, -1).expand(b, h, -1)
