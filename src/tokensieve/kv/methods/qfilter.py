from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve.compat import rope_inv_freq
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.rope import rotate, unrotate_keys
from tokensieve.errors import CalibrationError
from tokensieve.kv.methods.base import Method

COMMAND = "tokensieve calibrate --model <this model> --learned qfilter"


def filter_directions(samples: list[Any], inv_freq: Tensor | None) -> Tensor:
    """``[L, Hkv, G, D]``: per query head the first right singular vector of its pre-RoPE calibration queries, its
    sign chosen so that the queries' mean projection on it is positive."""
    out = []
    for s in samples:
        q = s.queries  # [Hkv, G, n, D]
        if inv_freq is not None:
            q = rotate(q, -(s.rows.float()[:, None] * inv_freq)[None, None])
        u = torch.linalg.svd(q, full_matrices=False).Vh[..., 0, :]  # [Hkv, G, D]
        sign = torch.einsum("hgnd,hgd->hgn", q, u).mean(-1, keepdim=True).sign()  # [Hkv, G, 1]
        out.append(u * torch.where(sign == 0, torch.ones_like(sign), sign))
    return torch.stack(out)


@dataclass
class QFilter(Method):
    """Q-Filters: queries concentrate along one direction per head, so a key's attention is predicted by its
    projection on that direction. The filters (per query head, the principal direction of a calibration prefill's
    pre-RoPE queries, ``calibration_tokens`` of the offline corpus) are computed once by ``tokensieve calibrate
    --learned qfilter`` and stored per model; a model without them is a one-line error naming that command. Score:
    the pre-RoPE key's projection on its group's filters, GQA mean; ``sinks`` and a recent ``window`` kept."""

    id = "qfilter"
    paper = "Q-Filters: Leveraging QK Geometry for Efficient KV Cache Compression (Godey et al., 2025)"
    rule = "per head u = top right singular vector of calibration pre-RoPE queries (sign: q.u > 0); score k_pre.u"

    sinks: int = 4
    window: float = 16
    calibration_tokens: int = 1024

    def calibrate(self, model: Any, tokenizer: Any) -> Tensor:
        """Compute and store the filters (what the command runs)."""
        return self._load(model, tokenizer, force=True)

    def _load(self, model: Any, tokenizer: Any, force: bool) -> Tensor:
        from tokensieve.kv.learned import head_calibration

        inv = rope_inv_freq(model)
        self._inv_freq = inv
        self._filters = head_calibration("qfilter", model, tokenizer, {}, self.calibration_tokens,
                                         lambda s: filter_directions(s, inv), COMMAND, force)  # fmt: skip
        from tokensieve.kv.cache import CompressibleCache

        self._rows = {layer.layer_idx: r for r, layer in enumerate(CompressibleCache(model.config).sieve_layers)}
        return self._filters

    def bind(self, model: Any) -> None:
        self._load(model, None, force=False)

    def score(self, x: ScoreInputs) -> Tensor:
        filters = getattr(self, "_filters", None)
        if filters is None:
            raise CalibrationError(f"{self.id} needs its filters: compress through tokensieve.compress ({COMMAND})")
        u = filters[self._rows[x.layer_idx]].to(x.keys.device)  # [Hkv, G, D]
        keys = unrotate_keys(x.keys, self._inv_freq)  # slot j was rotated by position j
        return torch.einsum("bhtd,hgd->bht", keys, u) / u.shape[1]
