from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


@dataclass
class ZipCache(Method):
    """Normalized attention score: sum_i A[i, j] / (number of queries that see j), which removes the
    lower-triangle bias towards early tokens. As in the paper it is estimated from probe queries (the
    last ``recent`` rows plus a random ``probes`` fraction of the rest), never the full matrix.
    Here it ranks tokens for eviction; its mixed-precision use lives in the quantization methods."""

    id = "zipcache"
    paper = "ZipCache: Accurate and Efficient KV Cache Quantization with Salient Token Identification (He et al., 2024)"
    rule = "sum_i A[i, j] / #queries seeing j, over recent + random probe queries"

    recent: int = 32
    probes: float = 0.1

    def needs(self) -> Needs:
        return Needs(window=self.recent, probes=self.probes)

    def score(self, x: ScoreInputs) -> Tensor:
        probs, rows = x.probe_probs(self.recent, self.probes)  # [B, Hkv, G, n, T]
        summed = probs.sum(3).mean(2)
        return summed / x.visible_counts(rows).clamp(min=1).unsqueeze(1)
