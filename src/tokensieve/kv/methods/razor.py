from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.merge import with_compensation_token
from tokensieve.errors import BudgetError
from tokensieve.kv.heads import ragged_layer, rank_rows, real_lengths, window_counts
from tokensieve.kv.methods.base import Calibrated
from tokensieve.kv.methods.streaming import Streaming

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class Razor(Calibrated):
    """Retrieval heads keep everything; every other KV head keeps ``sinks`` + a recent window + one compensation token
    (the mean key and value of what it dropped, standing for all of them: log of their number is added to its logits).
    Retrieval heads: the top ``induction`` fraction of KV heads by induction score plus the top ``echo`` fraction by
    echo score (attention to the token after, and to, the previous occurrence on repeated random sequences; a KV head
    scores as its strongest query head), from the model's calibration (``tokensieve calibrate``, automatic on first
    use). The window makes the whole cache average the budget, ``(budget x N - T x R) / (N - R) - 1`` tokens in each of
    the N - R other KV heads (R retrieval heads, T context tokens): ``keep`` must exceed the retrieval share."""

    id = "razor"
    paper = "RazorAttention: Efficient KV Cache Compression Through Retrieval Heads (Tang et al., 2024)"
    rule = "calibrated echo/induction heads keep all; others sinks + recent window + 1 compensation token"
    kind: ClassVar[str] = "retrieval heads (calibrated)"

    sinks: int = 4
    induction: float = 0.1
    echo: float = 0.02
    compensate: bool = True
    _heads: Tensor | None = field(default=None, init=False, repr=False, compare=False)  # [L, Hkv] bool, by bind

    score = Streaming.score  # plain recency: the window is the most recent tokens

    def bind(self, model: Any) -> None:
        super().bind(model)
        self._heads = self.calibration.retrieval_kv_heads(self.induction, self.echo)

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
        row_of = self.calibration.row(layer.layer_idx)  # raises first when nothing bound the calibration
        scores = self.score(x)
        if allocator is not None and allocator.head_budgets(scores, budget, layer.valid, self.sinks, 0) is not None:
            raise BudgetError(
                "razor sets each head's budget itself (retrieval heads whole, the others a window): use the "
                "uniform, pyramid or compresskv allocator"
            )
        real = real_lengths(layer.valid, scores.shape[0], scores.shape[2])
        windows = [self.window_for(budget, n) for n in real]
        order = rank_rows(scores, layer.valid, self.sinks, [w - self.sinks for w in windows])
        counts = window_counts(real, windows, self._heads[row_of])  # type: ignore[index]  # set with the calibration
        # dropped tokens stay in rank order: the compensation token's mean sums them in that order
        return ragged_layer(layer, order, counts, self._segment, sort_dropped=False)

    def _segment(self, k_all: Tensor, v_all: Tensor, kept: Tensor, dropped: Tensor, src: Tensor):
        if not (self.compensate and dropped.numel()):
            return k_all[kept], v_all[kept], src, torch.zeros(kept.numel(), device=k_all.device)
        k, v, w = with_compensation_token(k_all[kept], v_all[kept], k_all[dropped], v_all[dropped])
        return k, v, torch.cat([src.new_full((1,), -1), src]), w
