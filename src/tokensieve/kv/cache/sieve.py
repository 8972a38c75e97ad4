"""A transformers ``Cache`` whose full-attention layers can be compressed.

Sliding-window layers are left as transformers builds them (they already bound their size), except
that their prefill view is copied out so its memory is released.
"""

from __future__ import annotations

import copy

from transformers.cache_utils import DynamicCache

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.core.ops.memory import layers_bytes
from tokensieve.errors import UnsupportedArchitectureError
from tokensieve.kv.cache.layers import CompactSlidingLayer, SieveLayer


class CompressibleCache(DynamicCache):
    """A ``DynamicCache`` with ``SieveLayer`` for every full-attention layer.

    This layer of the house holds tensors only; its subclass ``tokensieve.SieveCache`` (``kv/plan.py``) adds a
    method that compresses the prompt at the end of the prefill, layer by layer.
    """

    def __init__(self, model_or_config) -> None:
        config = getattr(model_or_config, "config", model_or_config)
        if not isinstance(config, compat.PreTrainedConfig):
            raise TypeError("SieveCache needs a model or its config")
        if config is not model_or_config:
            hooks.prepare(model_or_config)
        text = config.get_text_config(decoder=True)
        types, kwargs = compat.layer_types_and_kwargs(text)
        layers = []
        for i, (kind, kw) in enumerate(zip(types, kwargs, strict=True)):
            if kind == "full_attention":
                layers.append(SieveLayer(i))
            elif kind == "sliding_attention":
                layers.append(CompactSlidingLayer(**kw))
            else:
                raise UnsupportedArchitectureError(f"cache layer type {kind!r} is not supported")
        compat.init_cache_layers(self, layers)  # DynamicCache's own __init__ would build its own layers
        self.config = text

    paging = None  # an ``kv.pages.Paging`` when compressed in whole pages: kv_bytes then counts pages

    @property
    def sieve_layers(self) -> list[SieveLayer]:
        return [layer for layer in self.layers if isinstance(layer, SieveLayer) and not compat.is_sliding_layer(layer)]

    @property
    def has_sliding_layers(self) -> bool:
        return any(compat.is_sliding_layer(layer) for layer in self.layers)  # a cut window too

    def fork(self) -> CompressibleCache:
        """A cheap copy that shares tensors: appending to it never touches this cache (updates rebind
        new tensors, nothing is written in place), so one compressed context can serve many questions."""
        out = copy.copy(self)
        out.layers = [layer.fork() if isinstance(layer, SieveLayer) else copy.copy(layer) for layer in self.layers]
        return out

    def kv_bytes(self) -> int:
        """Bytes actually held by the key and value tensors (their storages, counted once); for a paged cache,
        what a paged engine holds (pages x page bytes, from the tensors' shapes and dtypes)."""
        if self.paging is not None:
            return self.paging.kv_bytes(self)
        return layers_bytes(self.layers, _held)

    def tokens_held(self) -> list[float]:
        """Slots held per KV head, per layer (the mean over heads for a ragged layer)."""
        return [
            (layer.tokens_per_head() if isinstance(layer, SieveLayer) else layer.keys.shape[-2])
            if layer.is_initialized
            else 0
            for layer in self.layers
        ]


def _held(layer) -> list:
    return layer.held_tensors() if isinstance(layer, SieveLayer) else [layer.keys, layer.values]
