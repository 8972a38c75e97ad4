"""What a vision method is: when token counts change (``target``) and how (``reduce``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.errors import BudgetError, InvalidKeepError, check_keep
from tokensieve.registry import Registered
from tokensieve.vision.tokens import MergePlan, Tokens, prune


@dataclass
class VisionMethod(Registered):
    """One-shot pruning by default: before layer ``at``, keep ``keep`` of the patch tokens by ``score``."""

    id: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    rule: ClassVar[str] = ""
    kind: ClassVar[str] = "vision tokens (ViT)"
    needs_cls: ClassVar[bool] = False  # ranks by [CLS] attention: refuses models without a CLS token
    observe: ClassVar[frozenset[str]] = frozenset()  # "cls", "qk", "ttv": what the attention hook records
    # where token counts change: "layer" (before a layer, by ``reduce``) or "mlp" (inside a block, between
    # attention and MLP, by ``plan``: ToMe's place, so the MLP already runs on the merged tokens)
    stage: ClassVar[str] = "layer"
    first_at: ClassVar[int] = 1  # the earliest ``at``: a layer-boundary cut needs one layer's attention first

    keep: float = 0.5
    at: int = 3  # the layer before which tokens are pruned (its predecessors' attention is the evidence)

    def __post_init__(self) -> None:
        check_keep(self.keep)
        if self.at < self.first_at:
            raise InvalidKeepError(
                f"at={self.at} leaves no attention to score by: start at layer {self.first_at} or later"
            )

    def n_keep(self, n_patches: int) -> int:
        return max(1, math.ceil(self.keep * n_patches - 1e-9))

    def target(self, layer: int, n_layers: int, st: Tokens, n_now: int) -> int | None:
        """Patch tokens wanted before ``layer`` (None: leave the count alone)."""
        if self.at >= n_layers:
            raise BudgetError(f"at={self.at} is past the model's {n_layers} layers: pick at < {n_layers}")
        if layer != self.at or self.keep >= 1.0:
            return None
        return self.n_keep(n_now)

    def score(self, x: Tensor, st: Tokens) -> Tensor:
        """[B, N] importance of the patch tokens now in ``x`` (larger = keep)."""
        raise NotImplementedError

    def reduce(self, x: Tensor, st: Tokens, n: int) -> Tensor:
        return prune(x, st, self.score(x, st).topk(n, dim=1).indices)

    def plan(self, x: Tensor, st: Tokens, n: int) -> MergePlan:
        """For ``stage == "mlp"``: how to merge the residual stream ``x`` down to ``n`` patch tokens."""
        raise NotImplementedError

    # hooks the engine calls; most methods leave them alone
    def resize(self, pixels: Tensor, patch: int) -> Tensor:
        return pixels

    def run_patches(self, grid: tuple[int, int], patch: int) -> int:
        return grid[0] * grid[1]

    def start(self, st: Tokens) -> None:
        pass

    def track(self, x: Tensor, st: Tokens) -> None:
        pass


def cls_attention(st: Tokens, layers: list[int]) -> Tensor:
    """[B, N] head-mean [CLS] attention to the patch tokens, averaged over ``layers``."""
    maps = [st.cls_attn[i].mean(1)[:, st.n_special :] for i in layers]
    return sum(maps) / len(maps)
