"""The base of every prefill-eviction method: a dataclass with a score and its protected tokens.

A method says what it needs the prefill to observe (``needs``) and turns one layer's observation into
a score ``[B, Hkv, T]`` (larger = keep). Which tokens survive is decided elsewhere, uniformly: the
budget says how many, ``core.ops.select`` applies the protected sinks and recent window and takes the top.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import PassScore, ScoreInputs
from tokensieve.errors import BudgetError, CalibrationError
from tokensieve.registry import Registered, instantiate

if TYPE_CHECKING:
    from tokensieve.kv.cache import CompressibleCache
    from tokensieve.kv.cache.biased import BiasedLayer
    from tokensieve.kv.methods.decode_rule import DecodeRule


@dataclass
class Method(Registered, ABC):
    """Protection is shared by all methods: ``sinks`` first tokens and a ``window`` of recent ones are
    always kept. ``window`` < 1 is a fraction of the budget (H2O's half-recent split), else a count."""

    kind: ClassVar[str] = "prefill eviction"  # the family `tokensieve methods` groups it under

    sinks: int = 0
    window: float = 0

    changes_prefill: ClassVar[bool] = False  # installs its own layers on the cache before the prefill runs
    adaptive: ClassVar[bool] = False  # decides the share it keeps itself (a threshold): it acts even at keep=1.0

    @property
    def global_budget(self) -> bool:
        """It spends the whole cache's budget at once (one top-k over every layer and head), so a layer allocator
        has nothing to decide: ``Plan.make`` refuses any allocator but ``uniform`` for it."""
        return False

    @property
    def evicts_only(self) -> bool:
        """Its result is plain eviction by score (what decode-time eviction can carry on)."""
        return type(self).act is Method.act

    def act(self, layer: Any, x: ScoreInputs, budget: int, allocator: Any, inplace: bool) -> Any:
        """A layout of its own (merge, quantize, whole heads) for one layer; None: plain eviction by ``score``."""
        return None

    def decode_rule(self) -> DecodeRule | None:
        """Its score carried forward one query at a time while generating (``DecodeCache``), built from its own
        parameters; None: it does not evict at decode time. The rule lives in the method's file."""
        return None

    def prepare_cache(self, cache: Any) -> None:
        """For ``changes_prefill`` methods: install their layers on the cache before the prefill."""

    decode_share: ClassVar[bool] = False  # its decode rule decides the share kept while decoding (no budget)
    renumbers: ClassVar[bool] = False  # renumbers the kept tokens' positions (rerotate): every layer keeps as many
    own_prefill: ClassVar[bool] = False  # prefills the context its own way (block): a prefilled cache refuses it

    def finish(self, cache: Any, context_mask: Tensor | None) -> Tensor | None:
        """After every layer is compressed: a method that renumbers positions returns the slot indices ``[B, n]``
        the context now reads as (its shorter length n); None (the default) leaves the context as it was."""
        return None

    def needs(self) -> Needs:
        return Needs()

    def bind(self, model: Any) -> None:
        """Load or compute what the method needs from the model (a calibration); a no-op by default."""
        return None

    def whole_pass(self, pre: Any) -> dict[int, PassScore] | None:
        """Scores ``{layer_idx: [B, Hkv, T]}`` (or a tuple the method unpacks) that need the whole prefill (a
        ``Prefill``: model, full cache, ids, final hidden states), computed after it and handed to ``score`` as
        ``x.pass_score``. Methods that ask for it set ``Needs(whole_pass=True)``; the default (None) is a method
        scored during the prefill."""
        return None

    @abstractmethod
    def score(self, x: ScoreInputs) -> Tensor: ...

    def protected(self, budget: int) -> tuple[int, int]:
        """(sinks, window) in tokens for a per-head budget; the window shrinks first when the budget is small."""
        window = round(self.window * budget) if 0 < self.window < 1 else int(self.window)
        sinks = min(self.sinks, budget)
        return sinks, max(0, min(window, budget - sinks))


class ScoredBy(Method):
    """A method that ranks with another method's score (``self._inner``, set by the subclass) and acts on the
    ranking its own way (mixed precision): what the score needs, binds and protects is the inner method's."""

    _inner: Method

    def needs(self) -> Needs:
        return self._inner.needs()

    def bind(self, model: Any) -> None:
        self._inner.bind(model)

    def whole_pass(self, pre: Any) -> dict[int, PassScore] | None:
        return self._inner.whole_pass(pre)

    def score(self, x: ScoreInputs) -> Tensor:
        return self._inner.score(x)

    @property
    def global_budget(self) -> bool:
        return self.evicts_only and self._inner.global_budget

    def protected(self, budget: int) -> tuple[int, int]:
        return self._inner.protected(budget)


class Calibrated(Method):
    """A method that reads the model's calibration (``kv.calibration``: retrieval heads, layer errors), loaded
    once by ``bind``; ``calibration`` says clearly when nothing bound it."""

    _cal: Any = None  # not a field: what bind loaded

    def bind(self, model: Any) -> None:
        from tokensieve.kv.calibration import get_calibration  # its store and readers load only when bound

        self._cal = get_calibration(model)

    @property
    def calibration(self) -> Any:
        if self._cal is None:
            raise CalibrationError(
                f"{self.id} needs the model's calibration: compress through tokensieve.compress / prefill / "
                "SieveCache(model, ...), which bind it (or call method.bind(model))"
            )
        return self._cal


class Modifier(Method):
    """An attention modifier (ACT, ZeroTuning): it keeps every token and changes the attention of the prefill
    itself, through a logit ``bias`` that its layers add, installed on the cache before the prefill runs."""

    kind: ClassVar[str] = "attention modifier"

    changes_prefill: ClassVar[bool] = True

    def prepare_cache(self, cache: CompressibleCache) -> None:
        from tokensieve.kv.cache.biased import BiasedLayer

        for layer in cache.sieve_layers:
            compat.set_cache_layer(cache, layer.layer_idx, BiasedLayer(layer.layer_idx, self.bias))

    def bias(self, layer: BiasedLayer, query: Tensor, scaling: float) -> Tensor | None:
        """The logit bias ``[B, Hq, T]`` (per query head and key) this layer adds for the prompt's queries
        ``[B, Hq, T, D]``; None leaves the layer's attention alone."""
        raise NotImplementedError

    def score(self, x: ScoreInputs) -> Tensor:
        raise BudgetError(f"{self.id} is an attention modifier and keeps every token: use keep=1.0")

    def act(self, layer: Any, x: ScoreInputs, budget: int, allocator: Any, inplace: bool) -> Any:
        raise BudgetError(f"{self.id} is an attention modifier and keeps every token: use keep=1.0")


# method id -> class; ``kv.methods`` fills it with every method (kept here so that a method composing another,
# such as mikv or span, looks it up without importing the package that imports it)
REGISTRY: dict[str, type[Method]] = {}


def get_method(method: str | Method, **params: Any) -> Method:
    """A method instance from its id (with optional parameter overrides), or the instance itself."""
    return instantiate(REGISTRY, Method, "method id", method, params)
