"""What a prefill records for scoring: a few query rows, plus the all-query column stats."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tokensieve.core.observe.stats import ColumnStat, accumulate
from tokensieve.core.scores.attention import group_queries
from tokensieve.errors import EngagementError


@dataclass(frozen=True)
class Needs:
    """What a method needs a prefill to observe. Needs compose with ``|`` (the union)."""

    window: int = 0  # the last `window` query rows (the observation window)
    probes: float = 0.0  # plus this fraction of the earlier rows, drawn at random (ZipCache)
    stats: frozenset[ColumnStat] = field(default_factory=frozenset)
    whole_pass: bool = False  # a pass over the whole prefilled cache after the prefill (Method.whole_pass)
    final_hidden: bool = False  # the prefill keeps its final hidden states [B, T, d] (token surprise)
    layer_input: bool = False  # each layer's attention input [B, T, D] (after its norm; learned scorers)

    def __or__(self, other: Needs) -> Needs:
        return Needs(
            max(self.window, other.window),
            max(self.probes, other.probes),
            self.stats | other.stats,
            self.whole_pass or other.whole_pass,
            self.final_hidden or other.final_hidden,
            self.layer_input or other.layer_input,
        )


@dataclass
class LayerObservation:
    """One layer's record: captured queries ``[B, Hkv, G, n, D]`` at token indices ``rows``, and stats."""

    queries: Tensor
    rows: Tensor
    n_window: int
    stats: dict[str, Tensor]
    scaling: float
    seed: int = 0  # of the probe draw
    layer_input: Tensor | None = None  # the attention input [B, T, D] when ``Needs.layer_input``

    @property
    def nbytes(self) -> int:
        held = 0 if self.layer_input is None else self.layer_input.nbytes
        return self.queries.nbytes + sum(s.nbytes for s in self.stats.values()) + held


def probe_uniform(n_rows: int, seed: int = 0) -> Tensor:
    """One seeded uniform draw per row, fixed by (n_rows, seed): what decides which rows are probes."""
    return torch.rand(n_rows, generator=torch.Generator().manual_seed(seed))


def probe_rows(n_rows: int, window: int, fraction: float, seed: int = 0) -> Tensor:
    """The rows before the window whose draw is below ``fraction`` (about that fraction of them; the same
    rows for every layer). A row's membership depends only on (n_rows, seed, row), so a smaller window or
    fraction selects a subset of a larger one's rows: one prefill that captured the union serves every
    method exactly as its own prefill would (see ``ScoreInputs.probe_probs``)."""
    head = max(0, n_rows - window)
    if head == 0 or fraction <= 0:
        return torch.empty(0, dtype=torch.long)
    return (probe_uniform(n_rows, seed)[:head] < fraction).nonzero().flatten()


def observe(
    needs: Needs,
    query: Tensor,
    keys: Tensor,
    valid: Tensor | None,
    scaling: float,
    seed: int = 0,
    max_chunk_bytes: int = 16 << 20,
    layer_input: Tensor | None = None,
) -> LayerObservation:
    """Record what ``needs`` asks for from one layer's prefill queries ``[B, H, T, D]`` and keys."""
    t = query.shape[-2]
    q = group_queries(query, keys.shape[1])
    window = min(needs.window, t)
    rows = torch.cat([probe_rows(t, window, needs.probes, seed), torch.arange(t - window, t)]).to(query.device)
    stats = accumulate(sorted(needs.stats, key=lambda s: s.key), q, keys, valid, scaling, max_chunk_bytes)
    if needs.layer_input and layer_input is None:
        raise EngagementError("this score needs each layer's attention input, but the prefill did not capture it")
    held = layer_input if needs.layer_input else None
    return LayerObservation(q[:, :, :, rows].clone(), rows, window, stats, scaling, seed, held)
