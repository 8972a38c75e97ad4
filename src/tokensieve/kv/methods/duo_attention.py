from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.attention import attention_probs
from tokensieve.errors import ParameterError
from tokensieve.kv.heads import evict_to_counts
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def distant_mass(samples: list[Any], sinks: int, recent: int, block: int = 128) -> Tensor:
    """``[L, Hkv]``: the mean attention mass each KV head's queries (GQA-mean, every calibration row that can
    see past its recent window) put outside the first ``sinks`` and their own last ``recent`` keys, row
    blocks of ``block`` at a time (never a T x T matrix)."""
    out = []
    for s in samples:
        h, _, n, _ = s.queries.shape
        total, count = torch.zeros(h), 0
        for a in range(0, n, block):
            rows = s.rows[a : a + block]
            far = rows >= sinks + recent
            if not bool(far.any()):
                continue
            p = attention_probs(s.queries[None, :, :, a : a + block], s.keys[None], rows, None, s.scaling)[0]
            cols = torch.arange(p.shape[-1])
            outside = (cols[None, :] >= sinks) & (cols[None, :] < (rows[:, None] - recent + 1))
            mass = (p * outside).sum(-1).mean(1)  # [Hkv, rows]
            total += mass[:, far].sum(-1)
            count += int(far.sum())
        out.append(total / max(1, count))
    return torch.stack(out)


@dataclass
class DuoAttention(Method):
    """DuoAttention's head split, training-free form: each KV head's calibrated attention mass outside sinks and
    its recent window (``distant_mass`` on the calibration prose, cached per model) ranks the heads over the whole
    cache; the lowest become streaming heads that keep ``sinks`` + ``recent`` tokens, the rest keep everything.
    How many stream follows ``keep`` (the cache's share of the slots): ``keep = 1 - r + r (sinks + recent) / T``.
    Budget allocators do not apply (the split is per head); the gate-trained form does not fit this CPU's time."""

    id = "duo_attention"
    paper = "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads (Xiao et al., 2025)"
    rule = "heads with the least calibrated attention outside sinks + recent window keep only those; others all"

    sinks: int = 4
    recent: int = 256
    calibration_tokens: int = 1024

    def bind(self, model: Any) -> None:
        from tokensieve.kv.cache import CompressibleCache
        from tokensieve.kv.calibration import _tokenizer_for
        from tokensieve.kv.learned import head_calibration

        params = {"sinks": self.sinks, "recent": self.recent}
        tok = _tokenizer_for(model)
        self._mass = head_calibration("duo_attention", model, tok, params, self.calibration_tokens,
                                      lambda samples: distant_mass(samples, self.sinks, self.recent))  # fmt: skip
        self._rows = {layer.layer_idx: r for r, layer in enumerate(CompressibleCache(model.config).sieve_layers)}

    def score(self, x: ScoreInputs) -> Tensor:
        b, h, t = x.shape  # sinks first, then recency: what a streaming head keeps
        s = torch.arange(t, dtype=torch.float32, device=x.keys.device).expand(b, h, t).clone()
        s[..., : self.sinks] = float("inf")
        return s

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        mass = getattr(self, "_mass", None)
        if mass is None:
            raise ParameterError("duo_attention needs its head calibration: compress through tokensieve.compress")
        t = x.keys.shape[2]
        small = min(t, self.sinks + self.recent)
        if small >= t:
            return evict_to_counts(layer, self.score(x), torch.full(x.shape[:2], t), inplace)
        share = (1 - budget / t) / (1 - small / t)  # of the heads that stream
        n_stream = round(min(1.0, max(0.0, share)) * mass.numel())
        streaming = torch.zeros(mass.numel(), dtype=torch.bool)
        streaming[mass.flatten().argsort()[:n_stream]] = True
        row = streaming.view_as(mass)[self._rows[x.layer_idx]]
        counts = torch.where(row, small, t).expand(x.shape[0], -1)
        return evict_to_counts(layer, self.score(x), counts, inplace)
