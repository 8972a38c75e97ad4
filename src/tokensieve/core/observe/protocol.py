"""What the core's attention asks of a cache and its layers: the protocol ``kv``'s caches implement.

The core never imports ``kv``: ``hooks`` and ``full`` call these members on whatever cache a consumer built
(structural typing; ``tests/test_house.py`` checks that kv's layer classes and ``SieveCache`` satisfy them).
``hooks`` also keeps two counts on each layer it sees, ``compat.ENGAGEMENT_COUNTS`` (``n_updates``: updates
bound, ``n_attends``: attention calls received), set by the core itself and so not part of the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ObservedLayer(Protocol):
    """A cache layer whose attention the core hands back to it: it binds itself on ``update``
    (``hooks.bind``), and the attention call that follows runs ``attend`` when the layer ``owns`` the keys."""

    layer_idx: int
    # called after the layer's attention with (layer, query [B, H, q, D], scaling): what a plan observes
    on_attention: Callable[[Any, Tensor, float], None] | None
    # computes the layer's attention itself (a scoring pass, ``core.observe.full``): (layer, query, value, scaling)
    attend_with: Callable[..., Any] | None

    @property
    def needs_tokensieve_attention(self) -> bool:
        """Whether a plain SDPA call would be wrong for this layer (it evicted, or something observes it)."""
        ...

    def owns(self, key: Tensor) -> bool:
        """Whether ``key`` is what this layer's last update returned (the attention call is this layer's)."""
        ...

    def attend(
        self, module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs: Any
    ) -> Any:
        """This layer's attention output, as transformers' attention functions return it."""
        ...


@runtime_checkable
class ObservedCache(Protocol):
    """A cache holding ``ObservedLayer``s among transformers' own layers."""

    @property
    def sieve_layers(self) -> Sequence[ObservedLayer]:
        """The layers that bind themselves (sliding-window and plain layers excluded)."""
        ...

    def fork(self) -> ObservedCache:
        """A copy that shares held tensors: a pass on it leaves this cache as it was."""
        ...
