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


# --- vision (src/tokensieve/vision) ---

VISION_ATTENTION = "tokensieve_vision"


def register_vision_attention(fn: Any) -> None:
    # relies on AttentionInterface / AttentionMaskInterface.register taking any name (mask: plain SDPA masks)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VISION_ATTENTION, fn)
    AttentionMaskInterface.register(VISION_ATTENTION, sdpa_mask)


def sdpa_attention(module: torch.nn.Module, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
    # relies on transformers.integrations.sdpa_attention.sdpa_attention_forward being what "sdpa" runs
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def set_attention(model: torch.nn.Module, name: str) -> list[tuple[Any, str]]:
    """Switch every config in `model` to attention `name`; returns what to pass to `restore_attention`."""
    # relies on attention modules reading `config._attn_implementation` at call time (all ViT-family models do)
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    before = [(c, c._attn_implementation) for c in seen.values()]
    for config in seen.values():
        config._attn_implementation = name
    return before


def restore_attention(before: list[tuple[Any, str]]) -> None:
    for config, name in before:
        config._attn_implementation = name


def vision_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    # relies on a ViT encoder keeping its blocks in its longest nn.ModuleList, each called as layer(hidden_states, ...)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise TypeError(f"{type(model).__name__} has no list of encoder layers")
    return max(lists, key=len)


def takes_interpolate_pos_encoding(model: torch.nn.Module) -> bool:
    # relies on ViT/CLIP/SigLIP forwards naming the flag `interpolate_pos_encoding` (Dinov2 always interpolates)
    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
