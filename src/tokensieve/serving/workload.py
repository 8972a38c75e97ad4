"""Synthetic arrivals for the simulator: Poisson arrivals, context and output lengths drawn from lists."""

from __future__ import annotations

import random
from collections.abc import Sequence

from tokensieve.serving.simulator import Request


def poisson_requests(
    n: int, rate: float, contexts: Sequence[int], outputs: tuple[int, int], seed: int = 0
) -> list[Request]:
    """``n`` requests, ``rate`` arrivals per step on average; contexts uniform over ``contexts``, outputs
    uniform in ``outputs`` (inclusive). Deterministic for a seed."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        out.append(Request(i, int(t), rng.choice(list(contexts)), rng.randint(*outputs)))
    return out
