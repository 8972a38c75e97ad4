from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.kv.methods.kvzip import KVzip


@dataclass
class KVzipPlus(KVzip):
    """KVzip scaled by what the pair can contribute to an output: the reconstruction score times ``||v_j||``."""

    id = "kvzip+"
    rule = "kvzip's score times ||v_j||"

    def weigh(self, score: Tensor, values: Tensor) -> Tensor:
        return score * values.float().norm(dim=-1)
