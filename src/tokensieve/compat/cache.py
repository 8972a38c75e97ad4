"""The KV cache as transformers hands it around: the forward's cache argument, the cache object and its layers."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

# --- the cache argument -------------------------------------------------------------------------------------------
_CACHE_NAMES = ("cache", "past_key_values")


@functools.cache
def _cache_arg_of(cls: type) -> str:
    # transformers 5.24 renamed `past_key_values=` to `cache=` on forward (the old name warns, then goes);
    # earlier releases silently ignore `cache=` in forward, so the name is detected, never assumed.
    params = inspect.signature(cls.forward).parameters
    for name in _CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"{cls.__name__}.forward takes neither `cache` nor `past_key_values`")


def cache_arg(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` (and `generate`) takes a KV cache on this transformers."""
    return _cache_arg_of(type(model))


def with_cache(model: torch.nn.Module, cache: Any, **kwargs: Any) -> dict[str, Any]:
    """`kwargs` plus the cache under the name this model's forward takes it: `model(**with_cache(m, c, ...))`."""
    return {**kwargs, cache_arg(model): cache}


def given_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a model-level call was given under either name (a caller's old name still reaches forward)."""
    return next((kwargs[n] for n in _CACHE_NAMES if kwargs.get(n) is not None), None)


def call_cache(module: torch.nn.Module, kwargs: dict[str, Any]) -> Any:
    """The cache a forward (pre-)hook of ``module`` sees in its call kwargs, under the name ``module.forward``
    takes (decoder layers follow the same rename as the model: `cache=` from 5.24); None if it takes neither."""
    try:
        return kwargs.get(_cache_arg_of(type(module)))
    except TypeError:
        return None


# --- cache layers --------------------------------------------------------------------------------------------------
# Relies on: `DynamicLayer` keeps `keys`/`values` [B, H, T, D] and `is_initialized`, its `update(k, v)` appends by
# concatenation, and layers may be subclassed; `DynamicSlidingWindowLayer` is the sliding-window layer.
BaseLayer = DynamicLayer
SlidingLayer = DynamicSlidingWindowLayer


def dynamic_update(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`DynamicLayer.update` itself, skipping any override in between (an append of new slots at the end)."""
    return DynamicLayer.update(layer, keys, values)


def mark_initialized(layer: DynamicLayer, keys: torch.Tensor) -> None:
    # Relies on: a layer's `is_initialized`, `device` and (before 5.24 only) `dtype` mirror its tensors; setting all
    # three keeps every release's methods working on a layer whose tensors were set directly.
    layer.is_initialized, layer.device, layer.dtype = True, keys.device, keys.dtype


def adopt_layer(mine: DynamicLayer, theirs: DynamicLayer, names: tuple[str, ...] = ()) -> None:
    """Make ``mine`` hold ``theirs``'s tensors (shared): keys, values, ``names`` and the mirrored attributes."""
    for name in ("keys", "values", "is_initialized", *names):
        setattr(mine, name, getattr(theirs, name))
    if theirs.is_initialized:  # 5.24's lazy_initialization no longer sets `dtype`: derive both from the tensors
        mark_initialized(mine, theirs.keys)


# --- caches --------------------------------------------------------------------------------------------------------
# Relies on: `get_layer_types_and_kwargs(text_config)` gives each layer's type and its layer's constructor kwargs,
# and `Cache.__init__(layers=...)` takes prebuilt layers (DynamicCache's own __init__ would build its own).
def layer_types_and_kwargs(config: Any) -> tuple[list[str], list[dict]]:
    from transformers import cache_utils

    fn = getattr(cache_utils, "get_layer_types_and_kwargs", None)
    if fn is not None:
        return fn(config)
    # older releases: read the types off the layers DynamicCache itself builds for this config (public API)
    types, kwargs = [], []
    for layer in DynamicCache(config=config).layers:
        sliding = isinstance(layer, DynamicSlidingWindowLayer)
        types.append("sliding_attention" if sliding else "full_attention")
        kwargs.append({"sliding_window": layer.sliding_window} if sliding else {})
    return types, kwargs


def init_cache_layers(cache: Cache, layers: list) -> None:
    Cache.__init__(cache, layers=layers)


def set_cache_layer(cache: Cache, i: int, layer: Any) -> None:
    # Relies on: `cache.layers` is a plain list indexed by layer_idx that the cache reads on every update.
    old = cache.layers[i] if i < len(cache.layers) else None
    for name in ENGAGEMENT_COUNTS:  # a layer replaced by another layout keeps what engagement checks counted
        setattr(layer, name, max(getattr(layer, name, 0), getattr(old, name, 0)))
    cache.layers[i] = layer


ENGAGEMENT_COUNTS = ("n_updates", "n_attends")  # set by core.observe.hooks: updates bound, attention calls received


def is_sliding_layer(layer: Any) -> bool:
    # Relies on: cache layers say `is_sliding` (True on transformers' sliding-window layers; tokensieve's cut
    # windows say it too, and the sliding masks are built from the first layer that does).
    return bool(getattr(layer, "is_sliding", False))
