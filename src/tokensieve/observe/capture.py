"""What a prefill records for scoring: a few query rows, plus the all-query column stats."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..score.attention import group_queries
from .stats import ColumnStat, accumulate


@dataclass(frozen=True)
class Needs:
    """What a method needs a prefill to observe. Needs compose with ``|`` (the union)."""

    window: int = 0  # the last `window` query rows (the observation window)
    probes: float = 0.0  # plus this fraction of the earlier rows, drawn at random (ZipCache)
    stats: frozenset[ColumnStat] = field(default_factory=frozenset)

    def __or__(self, other: Needs) -> Needs:
        return Needs(max(self.window, other.window), max(self.probes, other.probes), self.stats | other.stats)


@dataclass
class LayerObservation:
    """One layer's record: captured queries ``[B, Hkv, G, n, D]`` at token indices ``rows``, and stats."""

    queries: Tensor
    rows: Tensor
    n_window: int
    stats: dict[str, Tensor]
    scaling: float

    @property
    def nbytes(self) -> int:
        return self.queries.nbytes + sum(s.nbytes for s in self.stats.values())


def probe_rows(n_rows: int, window: int, fraction: float, seed: int = 0) -> Tensor:
    """A seeded random subset of the rows before the window (the same rows for every layer)."""
    head = max(0, n_rows - window)
    n = round(fraction * head)
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(head, generator=gen)[:n].sort().values


def observe(
    needs: Needs,
    query: Tensor,
    keys: Tensor,
    valid: Tensor | None,
    scaling: float,
    seed: int = 0,
    max_chunk_bytes: int = 16 << 20,
) -> LayerObservation:
    """Record what ``needs`` asks for from one layer's prefill queries ``[B, H, T, D]`` and keys."""
    t = query.shape[-2]
    q = group_queries(query, keys.shape[1])
    window = min(needs.window, t)
    rows = torch.cat([probe_rows(t, window, needs.probes, seed), torch.arange(t - window, t)]).to(query.device)
    stats = accumulate(sorted(needs.stats, key=lambda s: s.key), q, keys, valid, scaling, max_chunk_bytes)
    return LayerObservation(q[:, :, :, rows].clone(), rows, window, stats, scaling)
