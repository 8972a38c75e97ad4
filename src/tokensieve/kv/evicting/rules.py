"""Incremental decode-time scores: the prefill score of a method, carried forward one query at a time.

A rule keeps a small *state* per layer: tensors whose last axis is the cache slot. ``init`` builds it from
the prefill observation (it equals the method's prefill score); ``update`` folds in the attention of the
new queries of one forward (never recomputing anything over past queries); ``score`` ranks the held
slots. The layer pads the state with zeros when slots are appended and gathers it when slots are evicted,
so a rule never sees slot bookkeeping.

Shapes: ``probs`` / ``logits`` ``[B, Hkv, G, q, S]`` are the new queries' attention over the held slots
(``logits`` are scaled and masked, -inf where a query cannot see a slot), ``real [B, q]`` marks real
(non-padding) query rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AboveUniform, AttnSum, GumbelSum
from tokensieve.core.scores.attention import NOISE_BLOCK, gumbel_noise

State = dict[str, Tensor]


@dataclass
class Step:
    """One forward's new queries, as the layer hands them to a rule."""

    probs: Tensor  # [B, Hkv, G, q, S]
    logits: Tensor  # [B, Hkv, G, q, S], scaled, -inf where masked
    real: Tensor  # [B, q] float: 1 for real query rows
    rows: Tensor  # [q] token index of each new query
    positions: Tensor  # [B, Hkv, S] token index held by each slot
    n_visible: Tensor  # [B, 1, 1, q, 1] how many real slots each query sees
    prompt_len: int  # tokens seen when decoding started (the prefill)


class DecodeRule(ABC):
    """How one method's score evolves while generating."""

    @abstractmethod
    def needs(self) -> Needs: ...

    @abstractmethod
    def init(self, x: ScoreInputs) -> State: ...

    @abstractmethod
    def update(self, state: State, step: Step) -> State: ...

    @abstractmethod
    def score(self, state: State) -> Tensor:
        """[B, Hkv or 1, S]: larger = keep."""


def _row_weights(step: Step, decay: float) -> Tensor:
    """[B, q]: decay^(q-1-i) for the i-th new row (A2SF's scan unrolled over one forward), 0 for padding."""
    q = step.rows.numel()
    w = torch.full((q,), float(decay), device=step.real.device).pow(
        torch.arange(q - 1, -1, -1, device=step.real.device)
    )
    return step.real * w


@dataclass
class AccumulatedAttention(DecodeRule):
    """H2O (decay 1) and A2SF (decay < 1): s <- decay^q * s + sum_i decay^(q-1-i) A[i], GQA-mean."""

    decay: float = 1.0

    def needs(self) -> Needs:
        return Needs(stats=frozenset({AttnSum(decay=self.decay)}))

    def init(self, x: ScoreInputs) -> State:
        return {"acc": x.stat(AttnSum(decay=self.decay)).clone()}

    def update(self, state: State, step: Step) -> State:
        w = _row_weights(step, self.decay)
        new = torch.einsum("bhgqs,bq->bhs", step.probs, w) / step.probs.shape[2]
        carried = state["acc"] * self.decay ** step.rows.numel() if self.decay != 1.0 else state["acc"]
        return {"acc": carried + new}

    def score(self, state: State) -> Tensor:
        return state["acc"]


@dataclass
class AboveUniformHistory(DecodeRule):
    """Scissorhands: over the last ``history`` queries, how often A[i, j] beat 1/#visible keys (GQA mean).

    A ring of the last ``history`` rows' per-slot counts (uint8, the number of heads of the group above the
    uniform level) lets the window slide exactly: each new row adds its counts and drops the oldest row's.
    """

    history: int | None = 256

    def needs(self) -> Needs:
        if self.history is None:
            return Needs(stats=frozenset({AboveUniform()}))
        return Needs(window=self.history)

    def init(self, x: ScoreInputs) -> State:
        b, hkv, t = x.shape
        if self.history is None:  # every query counts: no ring, the prefill stat is the count (x group size)
            g = x._obs("the column stat").queries.shape[2]
            return {"count": (x.stat(AboveUniform()) * g).round().int()}
        obs = x._obs("an observation window")
        w = min(self.history, obs.n_window, t)
        probs = x.window_probs(w)  # [B, Hkv, G, w, T]
        rows = obs.rows[obs.rows.numel() - w :]
        seen = rows + 1 if x.valid is None else x.valid.long().cumsum(-1)[:, rows]
        above = probs * seen.view(-1, 1, 1, w, 1).clamp(min=1) > 1.0
        if x.valid is not None:
            above &= x.valid[:, rows].view(b, 1, 1, w, 1)
        counts = above.sum(2, dtype=torch.uint8).permute(2, 0, 1, 3)  # [w, B, Hkv, T]
        ring = torch.cat([counts.new_zeros(self.history - w, b, hkv, t), counts])
        return {"ring": ring, "count": ring.sum(0, dtype=torch.int32)}

    def update(self, state: State, step: Step) -> State:
        above = (step.probs * step.n_visible > 1.0) & (step.real[:, None, None, :, None] > 0)
        new = above.sum(2, dtype=torch.uint8).permute(2, 0, 1, 3)  # [q, B, Hkv, S]
        if "ring" not in state:
            return {"count": state["count"] + new.sum(0, dtype=torch.int32)}
        ring = torch.cat([state["ring"], new])
        dropped, ring = ring[: new.shape[0]], ring[new.shape[0] :]
        count = state["count"] + new.sum(0, dtype=torch.int32) - dropped.sum(0, dtype=torch.int32)
        return {"ring": ring, "count": count}

    def score(self, state: State) -> Tensor:
        return state["count"].float()


@dataclass
class LastQuery(DecodeRule):
    """TOVA: the last query's attention averaged over every head of the layer (one ranking for all heads)."""

    def needs(self) -> Needs:
        return Needs(window=1)

    def init(self, x: ScoreInputs) -> State:
        return {"last": x.window_probs(1).mean(dim=(1, 2, 3)).unsqueeze(1)}  # [B, 1, T]

    def update(self, state: State, step: Step) -> State:
        return {"last": step.probs[:, :, :, -1].mean(dim=(1, 2)).unsqueeze(1)}

    def score(self, state: State) -> Tensor:
        return state["last"]


@lru_cache(maxsize=4)
def _noise_block(seed: int, block: int) -> Tensor:
    """Keyformer's Gumbel noise for rows [64 * block, 64 * block + 64) over every key they can see: the same
    values the prefill statistic draws (``gumbel_noise``), computed once per 64 decode steps."""
    b0 = block * NOISE_BLOCK
    return gumbel_noise(seed, 1, torch.arange(b0, b0 + NOISE_BLOCK), b0 + NOISE_BLOCK)[0, 0]


def gumbel_rows(seed: int, rows: Tensor, positions: Tensor) -> Tensor:
    """Noise [B, Hkv, q, S] at (row, positions[b, h, s]) for each new row: shared by heads, as at prefill."""
    out = []
    for r in rows.tolist():  # one row per decode step; a forward has only a few new rows
        block = _noise_block(seed, r // NOISE_BLOCK).to(positions.device)
        out.append(block[r % NOISE_BLOCK][positions.clamp(max=block.shape[1] - 1)])
    return torch.stack(out, 2)


@dataclass
class GumbelAccumulated(DecodeRule):
    """Keyformer: accumulate softmax((logits + Gumbel) / tau) with tau rising linearly from ``tau`` to
    ``tau_end`` over the first ``tau_steps`` decode steps (the paper raises it across generation; the
    cache cannot know the generation length, so the ramp length is a parameter)."""

    tau: float = 1.0
    tau_end: float = 2.0
    tau_steps: int = 512
    seed: int = 0

    def needs(self) -> Needs:
        return Needs(stats=frozenset({GumbelSum(tau=self.tau, seed=self.seed)}))

    def init(self, x: ScoreInputs) -> State:
        return {"acc": x.stat(GumbelSum(tau=self.tau, seed=self.seed)).clone()}

    def tau_at(self, rows: Tensor, prompt_len: int) -> Tensor:
        ramp = ((rows - prompt_len + 1).float() / max(1, self.tau_steps)).clamp(0.0, 1.0)
        return self.tau + (self.tau_end - self.tau) * ramp

    def update(self, state: State, step: Step) -> State:
        noise = gumbel_rows(self.seed, step.rows, step.positions)  # [B, Hkv, q, S]
        tau = self.tau_at(step.rows, step.prompt_len).to(step.logits.device).view(1, 1, 1, -1, 1)
        probs = torch.softmax((step.logits + noise.unsqueeze(2)) / tau, dim=-1).nan_to_num_(0.0)
        new = torch.einsum("bhgqs,bq->bhs", probs, step.real) / probs.shape[2]
        return {"acc": state["acc"] + new}

    def score(self, state: State) -> Tensor:
        return state["acc"]
