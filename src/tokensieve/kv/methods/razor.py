from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.merge import compensation_token
from tokensieve.core.ops.select import rank
from tokensieve.errors import BudgetError, CalibrationError
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class Razor(Method):
    """Retrieval heads keep everything; every other KV head keeps ``sinks`` + a recent window + one compensation
    token (the mean key and value of what it dropped, standing for all of them: log of their number is added to
    its logits).

    Retrieval heads come from the model's calibration (``tokensieve calibrate``; automatic on first use): on
    random sequences repeated twice, the top ``induction`` fraction of KV heads by induction score (attention
    to the token after the previous occurrence) plus the top ``echo`` fraction by echo score (attention to the
    previous occurrence), a KV head scoring as its strongest query head. The window is sized so that the whole
    cache averages the requested budget: ``(budget x N - T x R) / (N - R) - 1`` tokens for the N - R other KV
    heads of the model (R retrieval heads, T context tokens), so ``keep`` must exceed the retrieval share."""

    id = "razor"
    paper = "RazorAttention: Efficient KV Cache Compression Through Retrieval Heads (Tang et al., 2024)"
    rule = "calibrated echo/induction heads keep all; others sinks + recent window + 1 compensation token"
    kind: ClassVar[str] = "retrieval heads (calibrated)"

    sinks: int = 4
    induction: float = 0.1
    echo: float = 0.02
    compensate: bool = True

    def __post_init__(self) -> None:
        self._cal = None
        self._heads: Tensor | None = None

    def bind(self, model: Any) -> None:
        from tokensieve.kv.calibration import get_calibration

        self._cal = get_calibration(model)
        self._heads = self._cal.retrieval_kv_heads(self.induction, self.echo)

    def score(self, x: ScoreInputs) -> Tensor:
        b, h, t = x.shape
        return torch.arange(t, dtype=torch.float32, device=x.keys.device).expand(b, h, t)

    def window_for(self, budget: int, n_tokens: int) -> int:
        """Slots each non-retrieval head keeps besides its compensation token."""
        assert self._heads is not None
        total, ret = self._heads.numel(), int(self._heads.sum())
        window = (budget * total - n_tokens * ret) // max(1, total - ret) - int(self.compensate)
        if ret == total or window < self.sinks + 1:
            raise BudgetError(
                f"razor keeps {ret} of {total} KV heads whole ({ret / total:.0%} of the cache): {budget} tokens per "
                f"head on average leave the other heads no room for {self.sinks} sinks and a window; raise keep "
                f"above {ret / total + 0.02:.2f} or lower induction= / echo="
            )
        return window

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        from tokensieve.kv.cache.ragged import RaggedLayer

        if self._cal is None or self._heads is None:
            raise CalibrationError(
                "razor needs the model's calibration: compress through tokensieve.compress / prefill / "
                "SieveCache(model, ...), which bind it (or call method.bind(model))"
            )
        scores = self.score(x)
        if allocator is not None and allocator.head_budgets(scores, budget, layer.valid, self.sinks, 0) is not None:
            raise BudgetError(
                "razor sets each head's budget itself (retrieval heads whole, the others a window): use the "
                "uniform, pyramid or compresskv allocator"
            )
        retrieval = self._heads[self._cal.row(layer.layer_idx)]
        b, h, t = scores.shape
        keys, values, index, bias = [], [], [], []
        for row in range(b):
            n_real = t if layer.valid is None else int(layer.valid[row].sum())
            window = self.window_for(budget, n_real)
            valid = None if layer.valid is None else layer.valid[row : row + 1]
            order = rank(scores[row : row + 1], valid, self.sinks, window - self.sinks)[0]
            for head in range(h):
                k_all, v_all = layer.keys[row, head], layer.values[row, head]
                src = layer.token_index[row, head] if layer.token_index is not None else None
                n = n_real if bool(retrieval[head]) else min(window, n_real)
                kept, dropped = order[head, :n].sort().values, order[head, n:n_real]
                k, v = k_all[kept], v_all[kept]
                idx = kept if src is None else src[kept]
                w = torch.zeros(n, device=k.device)
                if self.compensate and dropped.numel():
                    ck, cv, count = compensation_token(k_all[dropped], v_all[dropped])
                    k, v = torch.cat([ck, k]), torch.cat([cv, v])
                    idx = torch.cat([idx.new_full((1,), -1), idx])
                    w = torch.cat([w.new_full((1,), math.log(count)), w])
                keys.append(k)
                values.append(v)
                index.append(idx)
                bias.append(w)
        return RaggedLayer.from_segments(layer.layer_idx, layer.cumulative_length, b, h, keys, values, index, bias)
