"""The one place that knows transformers internals (anything not public, stable API).

Each item says in one line what it relies on. Code elsewhere calls these helpers instead of
touching transformers' private names, so a transformers release that moves one breaks here only.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _cache_arg_of(cls: type) -> str:
    # transformers 5.24 renamed `past_key_values=` to `cache=` on forward (the old name warns, then goes);
    # earlier releases silently ignore `cache=` in forward, so the name is detected, never assumed.
    params = inspect.signature(cls.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{cls.__name__}.forward takes neither `cache` nor `past_key_values`")


def cache_arg(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` (and `generate`) takes a KV cache on this transformers."""
    return _cache_arg_of(type(model))


def with_cache(model: torch.nn.Module, cache: Any, **kwargs: Any) -> dict[str, Any]:
    """`kwargs` plus the cache under the name this model's forward takes it: `model(**with_cache(m, c, ...))`."""
    return {**kwargs, cache_arg(model): cache}


# --- training (tokensieve.train) ---


def register_attention(name: str, fn: Any) -> None:
    """Register an attention function under ``name`` (with SDPA's boolean mask builder) so that
    ``model.set_attn_implementation(name)`` routes every attention call through ``fn``."""
    from transformers import AttentionInterface  # the attention-function registry (public since 4.48)
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # mask builders keyed by impl name

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)


def sdpa_attention(module: torch.nn.Module, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
    """transformers' own SDPA attention function (integrations.sdpa_attention.sdpa_attention_forward)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def attention_layer_index(module: torch.nn.Module) -> int | None:
    """The decoder layer an attention module belongs to: its ``layer_idx`` attribute (Llama-style modules)."""
    return getattr(module, "layer_idx", None)
