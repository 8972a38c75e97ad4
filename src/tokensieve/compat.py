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


# --- question-unseen scores (issue 12) -------------------------------------------------------------------
def rope_inv_freq(model: torch.nn.Module) -> torch.Tensor | None:
    """The rotary inverse frequencies [D/2] of a model, or None: relies on HF's rotary modules keeping them in a
    buffer named `inv_freq` (the first one found; Gemma-3's local/global layers may differ)."""
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            return buf.detach().float().cpu()
    return None
