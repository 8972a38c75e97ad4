"""Per-key statistics summed over *all* prompt queries, accumulated chunk by chunk during prefill.

These are the only things that must be computed while the queries exist; everything a method needs
from a few rows (an observation window, probes) is captured as query vectors instead and scored later.
A stat is a frozen dataclass, so equal requests from several methods are computed once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.scores.attention import decay_weights, gumbel_noise, row_chunks, row_validity, softmax_rows


@dataclass(frozen=True)
class ColumnStat(ABC):
    """sum_i w(i) * term(i, j) over query rows i, reduced to [B, Hkv, T] by the mean over each GQA group."""

    history: int | None = None  # only the last `history` rows; None = every prompt row

    @property
    def key(self) -> str:
        return repr(self)

    def first_row(self, n_rows: int) -> int:
        return 0 if self.history is None else max(0, n_rows - self.history)

    def row_weights(self, rows: Tensor, last_row: int) -> Tensor:
        return torch.ones(rows.numel())

    @abstractmethod
    def term(self, probs: Tensor, logits: Tensor, rows: Tensor, valid: Tensor | None) -> Tensor: ...


@dataclass(frozen=True)
class AttnSum(ColumnStat):
    """H2O's accumulated attention; with decay < 1, A2SF's forgetting scan s_t = decay * s_{t-1} + A[t]."""

    decay: float = 1.0

    def row_weights(self, rows: Tensor, last_row: int) -> Tensor:
        return decay_weights(rows, last_row, self.decay)

    def term(self, probs: Tensor, logits: Tensor, rows: Tensor, valid: Tensor | None) -> Tensor:
        return probs


@dataclass(frozen=True)
class AboveUniform(ColumnStat):
    """Scissorhands: how often A[i, j] exceeded the uniform level 1 / (#keys row i can see)."""

    def term(self, probs: Tensor, logits: Tensor, rows: Tensor, valid: Tensor | None) -> Tensor:
        seen = rows + 1 if valid is None else valid.long().cumsum(-1)[:, rows]  # keys row i can see
        n_visible = seen.view(-1, 1, 1, rows.numel(), 1).clamp(min=1)
        return (probs * n_visible > 1.0).float()


@dataclass(frozen=True)
class GumbelSum(ColumnStat):
    """Keyformer: softmax((logits + Gumbel noise) / tau), accumulated over queries. The noise is drawn per
    (query, key) and shared by the heads: each head still sees i.i.d. Gumbel noise, and drawing it once
    instead of once per head makes this stat about twice as fast."""

    tau: float = 1.0
    seed: int = 0

    def term(self, probs: Tensor, logits: Tensor, rows: Tensor, valid: Tensor | None) -> Tensor:
        noise = gumbel_noise(self.seed, 1, rows, logits.shape[-1])  # [1, 1, n, T]
        return softmax_rows((logits + noise.unsqueeze(0)).div_(self.tau), valid is not None)


def chunk_logits(qs: Tensor, k_t: Tensor, lo: int, hi: int, valid: Tensor | None) -> Tensor:
    """Masked logits [B, Hkv, G, hi-lo, hi] for rows lo..hi-1 (``qs`` pre-scaled, ``k_t`` = keys^T).

    Only keys < hi can be seen, and only the diagonal block needs the causal mask.
    """
    b, hkv, g, _, d = qs.shape
    c = hi - lo
    logits = torch.matmul(qs[:, :, :, lo:hi].reshape(b, hkv, g * c, d), k_t[..., :hi]).view(b, hkv, g, c, hi)
    tri = torch.ones(c, c, dtype=torch.bool, device=qs.device).triu(1)
    logits[..., lo:hi].masked_fill_(tri, float("-inf"))
    if valid is not None:
        pad = torch.zeros(valid.shape[0], hi, device=qs.device).masked_fill_(~valid[:, :hi], float("-inf"))
        logits.add_(pad[:, None, None, None, :])
    return logits


def accumulate(
    stats: list[ColumnStat],
    q: Tensor,
    k: Tensor,
    valid: Tensor | None,
    scaling: float,
    max_chunk_bytes: int = 16 << 20,
) -> dict[str, Tensor]:
    """One pass over query-row chunks, sharing each chunk's softmax between all requested stats.

    q: [B, Hkv, G, T, D] (every prompt row), k: [B, Hkv, T, D]. Memory is bounded by ``max_chunk_bytes``
    per chunk of logits, whatever T is.
    """
    b, hkv, g, t, _ = q.shape
    out = {s.key: torch.zeros(b, hkv, t, dtype=torch.float32, device=q.device) for s in stats}
    if not stats:
        return out
    qs, k_t = q.float() * scaling, k.float().transpose(-1, -2)
    start = min(s.first_row(t) for s in stats)
    for rows in row_chunks(start, t, hkv * g, t, b, max_chunk_bytes):
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        rows = rows.to(q.device)
        logits = chunk_logits(qs, k_t, lo, hi, valid)
        probs = torch.softmax(logits, dim=-1)
        if valid is not None:
            probs = probs.nan_to_num_(0.0)  # padding rows see nothing
        real = row_validity(rows, valid, b)
        for s in stats:
            w = s.row_weights(rows, t - 1).to(q.device) * (rows >= s.first_row(t)).float()
            if not bool(w.any()):
                continue
            term = s.term(probs, logits, rows, valid)
            if valid is None and bool((w == 1).all()):
                out[s.key][..., :hi] += term.sum((2, 3)) / g
            else:
                out[s.key][..., :hi] += torch.einsum("bhgnt,bn->bht", term, real * w) / g
    return out
