"""The inputs a score function sees for one layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from tokensieve.core.observe.capture import LayerObservation, probe_uniform
from tokensieve.core.observe.stats import ColumnStat
from tokensieve.core.scores.attention import attention_probs, visible_counts

# one layer's result of a method's pass over the whole prefill: a score [B, Hkv, T], or a tuple the method
# unpacks itself (kvzip: its score and what every layer shares; surprise and span: theirs and an inner method's)
PassScore = Tensor | tuple[Any, ...]


@dataclass
class ScoreInputs:
    """Keys and values ``[B, Hkv, T, D]`` (after RoPE), padding ``valid [B, T]`` and the layer's observation."""

    keys: Tensor
    values: Tensor
    valid: Tensor | None
    obs: LayerObservation | None
    layer_idx: int = 0
    n_layers: int = 1
    pass_score: PassScore | None = None  # this layer's result of the method's pass over the whole prefill

    @property
    def shape(self) -> tuple[int, int, int]:
        b, h, t, _ = self.keys.shape
        return b, h, t

    def _obs(self, what: str) -> LayerObservation:
        if self.obs is None:
            raise RuntimeError(f"this score needs {what}, but the prefill observed nothing for layer {self.layer_idx}")
        return self.obs

    def window_probs(self, window: int) -> Tensor:
        """Attention ``[B, Hkv, G, w, T]`` of the last ``window`` prompt queries over every key."""
        obs = self._obs("an observation window")
        n = obs.rows.numel()
        if window > obs.n_window:
            if obs.n_window < n or n < self.keys.shape[2]:  # more rows existed: the prefill captured too few
                raise RuntimeError(f"window {window} is larger than the {obs.n_window} rows the prefill captured")
            window = obs.n_window  # the whole (short) context is the window
        q, rows = obs.queries[:, :, :, n - window :], obs.rows[n - window :]
        return attention_probs(q.float(), self.keys.float(), rows, self.valid, obs.scaling)

    def probe_probs(self, recent: int | None = None, fraction: float | None = None) -> tuple[Tensor, Tensor]:
        """Attention of the captured probe and window rows, with their token indices. With ``recent`` and
        ``fraction``, only the rows this setting would have captured alone: the last ``recent`` rows plus the
        earlier rows whose probe draw is below ``fraction`` (a prefill shared with methods that need a larger
        window or fraction captured a superset)."""
        obs = self._obs("probe queries")
        q, rows = obs.queries, obs.rows
        if recent is not None and fraction is not None:
            t = self.keys.shape[2]
            draw = probe_uniform(t, obs.seed).to(rows.device)[rows]
            keep = (rows >= t - recent) | (draw < fraction)
            q, rows = q[:, :, :, keep], rows[keep]
        return attention_probs(q.float(), self.keys.float(), rows, self.valid, obs.scaling), rows

    def visible_counts(self, rows: Tensor) -> Tensor:
        return visible_counts(rows, self.keys.shape[2], self.valid, self.keys.shape[0])

    def require_pass_score(self) -> Any:
        if self.pass_score is None:
            raise RuntimeError(f"this score needs a pass over the whole prefill, but layer {self.layer_idx} got none")
        return self.pass_score

    def stat(self, stat: ColumnStat) -> Tensor:
        obs = self._obs(f"the column stat {stat.key}")
        return obs.stats[stat.key]
