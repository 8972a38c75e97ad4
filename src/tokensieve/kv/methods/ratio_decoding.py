from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import ParameterError
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step
from tokensieve.kv.methods.wrap import Wrapper


@dataclass
class RatioDecoding(Wrapper):
    """kvpress's decoding-time compression with a share instead of a size: while generating, every ``interval``
    generated tokens each full layer is cut to ``ratio`` of all the tokens it has seen (prompt included), ranked by
    the base's decode-time score (``base=tova``, ``h2o``, ...; its sinks and window protected). Between cuts the
    cache grows, so the share held is an output (``DecodeCache.kept_ratio()``, ``--json``'s ``kept_ratio``). At
    prefill (``tokensieve.compress``) it ranks as its base does, at the plan's ``keep``. The prompt itself is not
    cut while decoding (pass ``prefill=`` to compress it first)."""

    id = "ratio_decoding"
    paper = "kvpress DecodingPress (NVIDIA, 2025), with a share of the tokens seen as target"
    rule = "every `interval` generated tokens cut each layer to `ratio` of every token seen, by the base's decode score"
    decode_share: ClassVar[bool] = True  # while decoding the share kept is its output

    base: str = "tova"
    ratio: float = 0.5
    interval: int = 512

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1 or self.interval < 1:
            raise ParameterError(f"ratio_decoding: ratio={self.ratio} must be in (0, 1], interval={self.interval} >= 1")
        super().__post_init__()

    def decode_rule(self) -> DecodeRule:
        inner = self._inner.decode_rule()
        if inner is None:
            raise ParameterError(f"ratio_decoding needs a base with a decode-time score, not {self.base!r}: "
                                 "one `tokensieve methods` marks '+ decode eviction' (tova, h2o, ...)")  # fmt: skip
        return EveryInterval(inner, self._inner, self.ratio, self.interval)


@dataclass
class EveryInterval(DecodeRule):
    """Another rule's running score; a cut to ``round(ratio x seen)`` slots whenever a forward crosses a multiple of
    ``interval`` generated tokens."""

    inner: DecodeRule
    method: Method  # whose protected sinks and window the cut keeps
    ratio: float
    interval: int
    decides: ClassVar[bool] = True

    def needs(self) -> Needs:
        return self.inner.needs()

    def init(self, x: ScoreInputs) -> State:
        return self.inner.init(x)

    def update(self, state: State, step: Step) -> State:
        return self.inner.update(state, step)

    def score(self, state: State) -> Tensor:
        return self.inner.score(state)

    def keep(self, layer: Any, state: State, new: int) -> tuple[State, Tensor | None]:
        done = layer.cumulative_length - layer.prompt_len  # tokens generated so far
        k = max(1, round(self.ratio * layer.cumulative_length))
        if new == 0 or done // self.interval == (done - new) // self.interval or layer.n_held <= k:
            return state, None
        b, h, n = layer.keys.shape[:3]
        return state, layer._select(self.score(state).expand(b, h, n), k, *self.method.protected(k))
