from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import protection_mask
from tokensieve.core.scores.attention import attention_probs
from tokensieve.errors import BudgetError, ParameterError
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
    Whole heads stream, so a budget between two head counts would be missed by up to a head's share (a third of
    the cache on Gemma-3-270M's three full-attention KV heads): the boundary head (the next to stream) keeps a
    longer recent window instead, so the cache meets the budget exactly. Each row is split by its own real length
    (a left-padded row as alone). A context no longer than ``sinks + recent`` cannot stream and is refused. Budget
    allocators do not apply (the split is per head); the gate-trained form does not fit this CPU's time."""

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
        sinks = protection_mask(x.valid, b, t, self.sinks, 0, s.device)
        return s.masked_fill(sinks[:, None], float("inf"))

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        mass = getattr(self, "_mass", None)
        if mass is None:
            raise ParameterError("duo_attention needs its head calibration: compress through tokensieve.compress")
        b, _, t = x.shape
        real = [t] * b if x.valid is None else x.valid.sum(-1).tolist()
        row = self._rows[x.layer_idx]
        counts = torch.stack([self.head_counts(int(n), budget, mass)[row] for n in real])
        return evict_to_counts(layer, self.score(x), counts, inplace)

    def head_counts(self, n: int, budget: int, mass: Tensor) -> Tensor:
        """Tokens each KV head keeps ``[L, Hkv]`` from a context of ``n`` at ``budget`` per head on average: the
        heads with the least distant mass stream (``sinks + recent``), the boundary head keeps what the budget
        leaves, the rest keep all ``n``."""
        counts = torch.full((mass.numel(),), n, dtype=torch.long)
        if budget >= n:
            return counts.view_as(mass)
        small = self.sinks + self.recent
        if small >= n:
            raise BudgetError(
                f"duo_attention: the context ({n} tokens) is no longer than sinks + recent ({small}), so no head can "
                "stream; lower recent= (or sinks=), or use a token-level method"
            )
        drop = (n - budget) * mass.numel()  # slots to free over every head
        order = mass.flatten().argsort()  # least distant mass streams first
        full, rest = divmod(drop, n - small)
        counts[order[:full]] = small
        if rest:
            counts[order[full]] = n - rest
        return counts.view_as(mass)
