"""An attention modifier: it keeps the whole cache and changes how attention is spread, so it is installed on
the cache before the prefill runs (``Modifier.prepare_cache``, in ``base.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.ops.select import first_real
from tokensieve.kv.methods.base import Modifier

if TYPE_CHECKING:
    from tokensieve.kv.cache.biased import BiasedLayer


@dataclass
class ZeroTuning(Modifier):
    """Scale the attention every query head pays to the initial token by ``gamma`` and renormalise (a logit bias
    ``log(gamma)`` on that token), in layers ``first_layer`` and up. gamma < 1 takes mass from the sink and gives
    it to the other tokens in proportion; gamma > 1 does the opposite. Head-specific tuning is left to the
    user (one gamma for all heads here); the paper tunes it per head on unlabeled data."""

    id = "zerotuning"
    paper = "ZeroTuning: Unlocking the Initial Token's Power to Enhance Large Language Models Without Training (2025)"
    rule = "attention to the initial token x gamma, renormalised, in every head of the chosen layers"

    gamma: float = 0.6
    first_layer: int = 0

    def bias(self, layer: BiasedLayer, query: Tensor, scaling: float) -> Tensor | None:
        if layer.layer_idx < self.first_layer:
            return None
        b, h, t, _ = query.shape
        out = query.new_zeros(b, h, t, dtype=torch.float32)
        first = first_real(layer.valid, b, query.device)
        out[torch.arange(b), :, first] = math.log(self.gamma)
        return out
