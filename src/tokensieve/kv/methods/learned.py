"""The base of the learned scorers (``kvzap``, ``fastkvzip``): a trained per-layer function of each token's
attention input (``kv.learned``), spent like kvzip's score: one top-k over the whole cache (``scope="global"``,
after the prefill; the scores cost one small matmul per layer) or per layer by the allocator, right after each
layer's attention (``scope="layer"``: the full cache never exists)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import global_counts
from tokensieve.errors import CalibrationError, check_choice
from tokensieve.kv.heads import evict_layer, evict_to_counts
from tokensieve.kv.learned import LearnedScorer, load_scorer
from tokensieve.kv.methods.base import Method

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


@dataclass
class LearnedScore(Method):
    """``sinks`` first tokens and a ``window`` of recent ones (a count, or < 1: a share of the context) are kept
    in either scope."""

    form: ClassVar[str] = "ridge"  # which trained scorer (kv.learned.FORMS) a subclass reads by default

    scope: str = "global"

    _scorer: ClassVar[Any] = None  # not a field: what bind loaded (set on the instance)

    def __post_init__(self) -> None:
        check_choice("scope", self.scope, ("layer", "global"))

    def scorer_form(self) -> str:
        return self.form

    def needs(self) -> Needs:
        return Needs(layer_input=True, whole_pass=self.scope == "global")

    def bind(self, model: Any) -> None:
        self._scorer = load_scorer(model, self.scorer_form(), self.id)

    @property
    def scorer(self) -> LearnedScorer:
        if self._scorer is None:
            raise CalibrationError(f"{self.id} has no trained scorer bound: compress through tokensieve.compress / "
                                   "prefill (which bind it) or call method.bind(model)")  # fmt: skip
        return self._scorer

    def _layer_score(self, layer_idx: int, x: Tensor) -> Tensor:
        s = self.scorer.score(layer_idx, x)
        t = s.shape[-1]
        recent = round(self.window * t) if 0 < self.window < 1 else int(self.window)
        s[..., : min(self.sinks, t)] = float("inf")
        if recent > 0:
            s[..., max(0, t - recent) :] = float("inf")
        return s

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        scores = {}
        for layer in pre.cache.sieve_layers:
            obs = pre.observations[layer.layer_idx]
            with torch.inference_mode():
                scores[layer.layer_idx] = self._layer_score(layer.layer_idx, obs.layer_input)
        shared = {"scores": scores, "counts": {}}
        return {i: (s, shared) for i, s in scores.items()}

    def score(self, x: ScoreInputs) -> Tensor:
        if x.pass_score is not None:
            return x.pass_score[0]
        obs = x._obs("the layer's attention input")
        return self._layer_score(x.layer_idx, obs.layer_input)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        if self.scope == "layer":
            return evict_layer(layer, self.score(x), budget, 0, 0, allocator, inplace)
        own, shared = x.require_pass_score()
        if budget not in shared["counts"]:  # one top-k over every layer's scores, once per budget
            shared["counts"][budget] = global_counts(shared["scores"], budget, x.valid)
        return evict_to_counts(layer, own, shared["counts"][budget][layer.layer_idx], inplace)
