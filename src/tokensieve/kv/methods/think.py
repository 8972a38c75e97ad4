from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import BudgetError, ParameterError
from tokensieve.kv.cache import SieveLayer
from tokensieve.kv.cache.channels import ChannelLayer, channel_scores
from tokensieve.kv.heads import evict_layer
from tokensieve.kv.methods.wrap import Wrapper

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator


@dataclass
class ThinK(Wrapper):
    """Key-channel pruning on top of any token method (``base``; ``keep=1.0`` prunes channels only). Per KV head,
    channel c scores ``mean(q_c^2)`` over the last ``queries`` prompt queries (all rows of the GQA group) times
    ``mean(k_c^2)`` over the context's keys; the lowest ``rho`` of the channels are dropped from the keys, which
    are stored without them (``ChannelLayer``: kept channels + their indices), and from every later query at
    attention (the head's attention scale unchanged). Values stay whole, so at rho=0.5 the cache holds 3/4 of the
    bytes of the tokens it keeps. Channels are chosen per sequence and KV head, as in the paper, so a left-padded
    row keeps what it keeps alone. The token method must leave a dense layer (a per-layer score;
    kvzip with ``scope=layer``)."""

    id = "think"
    paper = "ThinK: Thinner Key Cache by Query-Driven Pruning (Xu et al., 2024)"
    rule = "per KV head drop the lowest rho key channels by mean(q_c^2) x mean(k_c^2); queries drop them too"
    adaptive: ClassVar[bool] = True  # prunes channels even when the token budget keeps every token

    rho: float = 0.5
    queries: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.rho < 1:
            raise ParameterError(f"think: rho={self.rho} must be in [0, 1) (the share of key channels dropped)")
        super().__post_init__()

    def needs(self) -> Needs:
        return self._inner.needs() | Needs(window=self.queries)

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        obs = x._obs("recent queries")
        scores = channel_scores(obs.queries[..., -self.queries :, :], x.keys, x.valid)  # [B, Hkv, D]
        d = scores.shape[-1]
        keep = d - round(self.rho * d)
        channels = scores.topk(keep, -1).indices.sort(-1).values
        if budget >= layer.n_held:  # channels only
            out = layer if inplace else layer.fork()
        else:
            out = self._inner.act(layer, x, budget, allocator, inplace)
            if out is None:
                s = self._inner.score(x)
                out = evict_layer(layer, s, budget, *self._inner.protected(budget), allocator, inplace)
        if type(out) is not SieveLayer:
            raise BudgetError(
                f"think prunes the key channels of a dense layer, but base={self.base!r} left a {type(out).__name__}: "
                "use a per-layer score (base=kvzip/scope=layer, base=snapkv, ...) with the uniform or pyramid allocator"
            )
        return ChannelLayer.from_dense(out, channels.to(out.keys.device))
