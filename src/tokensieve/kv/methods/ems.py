from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AttnSum
from tokensieve.core.ops.merge import merge_into
from tokensieve.core.ops.select import rank
from tokensieve.kv.heads import evict_layer, head_counts, ragged_layer
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def _as_distribution(s: Tensor, valid: Tensor | None) -> Tensor:
    if valid is not None:
        s = s * valid[:, None, :]
    return s / s.sum(-1, keepdim=True).clamp(min=torch.finfo(s.dtype).tiny)


@dataclass
class EMS(Method):
    """Global-local score: global = attention accumulated over every prompt query divided by how many
    queries see the token (removing the early-token bias); local = attention from the last ``local``
    queries (which carries the recency bias). Each is normalised to a distribution per head, so neither
    bias dominates, and they are mixed with weight ``alpha`` on the global part.

    Evict-then-merge, per KV head: the low-score tokens are evicted, then each evicted token whose key has
    cosine similarity >= ``threshold`` with its nearest kept key is merged into it (similarity-weighted
    average of k and v, ``core.ops.merge``) instead of dropped; the slot then stands for its members and draws
    their attention (log of its weight added to its logits). Heads whose attention is redundant (similar
    keys) thus merge, heads with sparse, distinct keys just evict: the paper's split, decided per token by
    the threshold. ``merge=False`` evicts only. Merged layers are ragged (per-slot weights cost 4 bytes
    per slot); every allocator, head-adaptive ones included, composes with it."""

    id = "ems"
    paper = "EMS: Adaptive Evict-then-Merge Strategy for Head-wise KV Cache Compression (2024)"
    rule = (
        "alpha * norm(sum_i A[i, j] / #queries) + (1 - alpha) * norm(sum_{i in window} A[i, j]); evicted tokens "
        "with key cosine >= threshold merged into the nearest kept one"
    )

    local: int = 32
    alpha: float = 0.5
    merge: bool = True
    threshold: float = 0.9

    @property
    def evicts_only(self) -> bool:  # what decode eviction can compose with
        return not self.merge

    def needs(self) -> Needs:
        return Needs(window=self.local, stats=frozenset({AttnSum()}))

    def score(self, x: ScoreInputs) -> Tensor:
        _b, _, t = x.shape
        counts = x.visible_counts(torch.arange(t, device=x.keys.device)).clamp(min=1)
        glob = x.stat(AttnSum()) / counts.unsqueeze(1)
        loc = x.window_probs(self.local).sum(3).mean(2)
        return self.alpha * _as_distribution(glob, x.valid) + (1 - self.alpha) * _as_distribution(loc, x.valid)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        scores = self.score(x)
        sinks, window = self.protected(budget)
        if not self.merge:
            return evict_layer(layer, scores, budget, sinks, window, allocator, inplace)
        counts = head_counts(scores, budget, layer.valid, sinks, window, allocator)
        return ragged_layer(layer, rank(scores, layer.valid, sinks, window), counts, self._merged)

    def _merged(self, k_all: Tensor, v_all: Tensor, kept: Tensor, dropped: Tensor, src: Tensor):
        k, v, w, _ = merge_into(k_all[kept], v_all[kept], k_all[dropped], v_all[dropped], self.threshold)
        return k, v, src, w.log()
