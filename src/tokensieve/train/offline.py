"""Offline sample selection (T-SHIRT as published): score every sample once before training, keep the top share.

The online rule in ``methods/tshirt.py`` selects within each batch while the model trains; the paper ranks the
whole dataset with the starting model and then fine-tunes on the kept samples. ``random_keep`` is the matching
control: the same number of samples, chosen uniformly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch

from tokensieve.train.base import TrainRuleError
from tokensieve.train.loss import token_batch
from tokensieve.train.methods.tshirt import TShirt


@torch.no_grad()
def sample_scores(rule: TShirt, model: Any, batches: Iterable[dict[str, torch.Tensor]], pad_id: int = 0) -> list[float]:
    """One score per sample, in order, from ``model`` as it is now (no training happens)."""
    out: list[float] = []
    for b in batches:
        out += rule.sample_scores(token_batch(rule, model, b, None, pad_id)).tolist()
    return out


def _count(n: int, keep: float) -> int:
    if not 0.0 < keep <= 1.0:
        raise TrainRuleError(f"keep fraction {keep!r} is outside (0, 1]: pass e.g. 0.5 to keep half the samples")
    return max(1, round(n * keep))


def keep_top(scores: list[float], keep: float) -> list[int]:
    """Indices (ascending) of the top ``keep`` share of samples by score; ties go to the earlier sample."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[: _count(len(scores), keep)])


def random_keep(n: int, keep: float, seed: int) -> list[int]:
    """Indices (ascending) of a uniformly random ``keep`` share of ``n`` samples (the control for ``keep_top``)."""
    return sorted(random.Random(seed).sample(range(n), _count(n, keep)))
