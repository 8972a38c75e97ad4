from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AboveUniform
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step


@dataclass
class Scissorhands(Method):
    """Persistence of importance: over the last ``history`` queries, count how often each token's
    attention beat the uniform level 1/#keys. Ties (equal counts) go to the more recent token (the
    shared tie-break of ``select``); a recent window of 32 is protected as in the paper's buffer."""

    id = "scissorhands"
    paper = "Scissorhands: Exploiting the Persistence of Importance Hypothesis (Liu et al., 2023)"
    rule = "count of queries in a history window where A[i, j] > 1/#keys"

    window: float = 32
    history: int | None = 256

    def needs(self) -> Needs:
        return Needs(stats=frozenset({AboveUniform(history=self.history)}))

    def score(self, x: ScoreInputs) -> Tensor:
        return x.stat(AboveUniform(history=self.history))

    def decode_rule(self) -> DecodeRule:
        return AboveUniformHistory(self.history)


@dataclass
class AboveUniformHistory(DecodeRule):
    """Scissorhands at decode time: over the last ``history`` queries, how often A[i, j] beat 1/#visible keys
    (GQA mean). A ring of the last ``history`` rows' per-slot counts (uint8, the number of heads of the group
    above the uniform level) lets the window slide exactly: each new row adds its counts, drops the oldest's."""

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
