from __future__ import annotations

from dataclasses import dataclass

from tokensieve.kv.methods.learned import LearnedScore


@dataclass
class FastKVzip(LearnedScore):
    """Fast KVzip's gates, trained here (``tokensieve calibrate --learned fastkvzip``): per layer, each token's own
    16-dim key competes in a softmax against 16 learned sink keys for its 16-dim queries; the own key's share,
    averaged over the GQA group, fitted to kvzip's scores with binary cross-entropy. The first 4 tokens and the
    most recent 2% of the context are protected; one top-k over the whole cache."""

    id = "fastkvzip"
    paper = "Fast KVzip: gated KV eviction distilled from KVzip (2026)"
    rule = "softmax gate of x_t's own key against learned sink keys, mean over the GQA group"

    form = "gate"
    sinks: int = 4
    window: float = 0.02
