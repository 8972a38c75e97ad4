"""The one place that knows transformers internals (anything not public, stable API).

Each item says in one line what it relies on. Code elsewhere calls these helpers instead of
touching transformers' private names, so a transformers release that moves one breaks here only.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
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


# --- quantize (weight quantization, tokensieve.quantize) ---


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, in order."""
    # relies on: `get_decoder()` returning the base model, which keeps its blocks as `.layers`
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{type(model).__name__} keeps no `.layers` list in its decoder")
    return layers


@contextlib.contextmanager
def record_layer_calls(model: torch.nn.Module) -> Iterator[list[list[tuple[torch.Tensor, dict[str, Any]]]]]:
    """Record, per decoder layer, each call's hidden-state input and keyword arguments during a forward."""
    # relies on: decoder layers taking the hidden states first (positional or `hidden_states=`) and the rest
    # (mask, position embeddings of that layer's type, position ids) as keywords, as in transformers 4.5x-5.x
    layers = decoder_layers(model)
    calls: list[list[tuple[torch.Tensor, dict[str, Any]]]] = [[] for _ in layers]

    def hook(i: int):
        def pre(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            kw = dict(kwargs)
            hidden = args[0] if args else kw.pop("hidden_states")
            calls[i].append((hidden.detach(), kw))

        return pre

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def call_layer(layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run one decoder layer on recorded arguments and return its output hidden states."""
    # relies on: a decoder layer returning the hidden states (a tensor in 5.x, the first item of a tuple before)
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def logits_from_hidden(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A causal LM's logits for final hidden states (so callers can take the head in slices)."""
    # relies on: CausalLM heads computing `lm_head(h)`, then Gemma-style `final_logit_softcapping` if set
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
