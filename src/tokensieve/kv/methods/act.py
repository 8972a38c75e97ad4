"""An attention modifier: it keeps the whole cache and changes how attention is spread, so it is installed on
the cache before the prefill runs (``Modifier.prepare_cache``, in ``base.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokensieve.core.observe.stats import AttnSum, accumulate
from tokensieve.core.ops.select import first_real
from tokensieve.core.scores.attention import visible_counts
from tokensieve.kv.methods.base import Modifier

if TYPE_CHECKING:
    from tokensieve.kv.cache.biased import BiasedLayer


@dataclass
class ACT(Modifier):
    """Attention calibration: in every query head of layers ``first_layer`` and up, the tokens other than the
    first that take a mean attention share >= ``epsilon`` (sinks in the middle of the sequence, measured over
    all prompt queries in bounded chunks while the prefill runs) get their attention scaled by ``beta`` and the
    rest renormalised. The sinks are found once per prompt at the prefill and kept for decoding."""

    id = "act"
    paper = "Unveiling and Harnessing Hidden Attention Sinks: Training-Free Attention Calibration (Yu et al., 2024)"
    rule = "non-initial tokens with mean attention share >= epsilon: attention x beta, renormalised"

    epsilon: float = 0.2
    beta: float = 0.4
    first_layer: int = 2
    min_queries: int = 32

    def bias(self, layer: BiasedLayer, query: Tensor, scaling: float) -> Tensor | None:
        if layer.layer_idx < self.first_layer:
            return None
        b, h, t, d = query.shape
        keys = layer.keys.repeat_interleave(h // layer.keys.shape[1], 1)
        stat = AttnSum()
        sums = accumulate([stat], query.view(b, h, 1, t, d), keys, layer.valid, scaling)[stat.key]
        counts = visible_counts(torch.arange(t, device=query.device), t, layer.valid, b).clamp(min=1)
        share = sums / counts[:, None, :]
        sink = (share >= self.epsilon) & (counts >= min(self.min_queries, max(1, t // 2)))[:, None, :]
        sink[torch.arange(b), :, first_real(layer.valid, b, query.device)] = False
        return torch.where(sink, math.log(self.beta), 0.0)
