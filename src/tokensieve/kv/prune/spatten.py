from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokensieve.kv.prune.base import Pruner


@dataclass
class SpAtten(Pruner):
    """Cascade token pruning: each token's importance is its attention probability accumulated over
    every layer so far and every head (from the last ``rows`` queries: SpAtten's hardware gets all
    queries' probabilities for free, SDPA does not, so a window of queries estimates it). Before each
    pruning layer the least important tokens are removed, and a removed token stays removed for the
    remaining layers and for generation. (Head pruning, the paper's other half, is not done here.)"""

    id = "spatten"
    paper = "SpAtten: Efficient Sparse Attention Architecture with Cascade Token and Head Pruning (Wang et al., 2021)"
    rule = "cumulative attention probability over layers and heads; cascade: pruned tokens stay pruned"
    cumulative: ClassVar[bool] = True

    rows: int = 64

    def observed_layers(self, n_layers: int) -> set[int]:
        return set(range(max(self.stages(n_layers))))
