from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import left_align
from tokensieve.kv.methods.base import Method


def window_share(x: Tensor, width: int) -> Tensor:
    """``[B, H, T]`` -> each entry over the sum of its window of ``width`` consecutive slots (windows from slot 0)."""
    b, h, t = x.shape
    pad = (-t) % width
    blocks = F.pad(x, (0, pad)).reshape(b, h, -1, width)
    return (blocks / blocks.sum(-1, keepdim=True).clamp(min=1e-12)).reshape(b, h, -1)[..., :t]


@dataclass
class CUR(Method):
    """CurDKV's cheap form: a token matters when both its key and its value are large within its neighbourhood,
    ``||k_i||^2 * ||v_i||^2`` with each norm first divided by its window's sum (windows of ``group`` slots), the
    stand-in for the CUR leverage of K and V that the paper also uses at speed. The first 4 tokens are protected.
    Windows start at each row's first real token, so a left-padded row scores as it does alone; padding scores 0."""

    id = "cur"
    paper = "Value-Guided KV Compression for LLMs via Approximated CUR Decomposition (CurDKV, NeurIPS 2025)"
    rule = "(||k_i||^2 / window sum) x (||v_i||^2 / window sum), windows of 16; first 4 protected"

    sinks: int = 4
    group: int = 16

    def score(self, x: ScoreInputs) -> Tensor:
        k2, v2 = x.keys.float().pow(2).sum(-1), x.values.float().pow(2).sum(-1)
        if x.valid is not None:
            k2, v2 = k2 * x.valid[:, None], v2 * x.valid[:, None]
        k2, v2 = left_align(k2, x.valid), left_align(v2, x.valid)
        return left_align(window_share(k2, self.group) * window_share(v2, self.group), x.valid, undo=True)
