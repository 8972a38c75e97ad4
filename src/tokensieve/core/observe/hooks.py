"""The one place tokensieve meets a model's forward: one registered attention function for every consumer.

``register()`` registers an attention implementation named ``tokensieve`` (SDPA underneath); ``prepare(model)``
checks a decoder-only model and switches it to it, and the vision, vision-language and training consumers switch
their model (or its configs) to the same name; nothing is patched at import time. Each call of ``sieve_attention``
goes, in this order, to:

1. the KV cache layer that bound itself in the ``update`` just before (``bind``), when that layer ``owns`` the
   keys: that is how a layer (``protocol.ObservedLayer``, implemented by ``kv``'s layers) gets its per-layer mask
   after eviction and sees the queries it must observe;
2. else the newest observer active on this thread (``observing`` / ``observe``, one per consumer: ``vision``,
   ``vlm``, ``train``): an attention function that records what its consumer needs and returns SDPA's output
   (vision's merged tokens add their size bias to the mask first);
3. else transformers' own SDPA with the same arguments, so layers that are not ours (sliding-window layers, a
   plain ``DynamicCache``) and a model with no consumer active run exactly the plain path (bit-exact).

Both the binding and the observers are per thread, so two threads running models do not see each other's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from tokensieve import compat
from tokensieve.core.observe.protocol import ObservedLayer
from tokensieve.errors import EngagementError, NotPreparedError, UnsupportedArchitectureError

ATTENTION = "tokensieve"
SUPPORTED_LAYER_TYPES = {"full_attention", "sliding_attention"}
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")

# an attention function as transformers calls one: (module, query, key, value, mask, **kwargs) -> (output, weights)
AttentionFn = Callable[..., Any]

_bound = threading.local()  # .layer: the cache layer the next attention call on this thread belongs to
_observers = threading.local()  # .active: consumer -> its attention function, the newest last
_inputs = threading.local()  # .latest: layer index -> its newest attention input (while capturing)


def bind(layer: ObservedLayer) -> None:
    stale = getattr(_bound, "layer", None)
    if stale is not None and stale is not layer and stale.needs_tokensieve_attention:
        _bound.layer = None
        raise NotPreparedError(
            "the model is not using tokensieve's attention, so a compressed or observing cache cannot work: "
            "call tokensieve.prepare(model) (or build the cache with SieveCache(model, ...))"
        )
    layer.n_updates = getattr(layer, "n_updates", 0) + 1
    _bound.layer = layer


def sdpa(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs: Any):
    """transformers' own SDPA attention: the exact path every layout falls back to."""
    return compat.sdpa(module, query, key, value, mask, **kwargs)


def scaling_of(query: Tensor, kwargs: dict[str, Any]) -> float:
    return float(kwargs.get("scaling") or query.shape[-1] ** -0.5)


def sieve_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    layer = getattr(_bound, "layer", None)
    _bound.layer = None
    if layer is None or not layer.owns(key):
        observer = _newest_observer()
        if observer is not None:
            return observer(module, query, key, value, attention_mask, **kwargs)
        return sdpa(module, query, key, value, attention_mask, **kwargs)
    layer.n_attends = getattr(layer, "n_attends", 0) + 1
    return layer.attend(module, query, key, value, attention_mask, **kwargs)


def _active() -> dict[str, AttentionFn]:
    active = getattr(_observers, "active", None)
    if active is None:
        active = _observers.active = {}
    return active


def _newest_observer() -> AttentionFn | None:
    active = getattr(_observers, "active", None)
    return next(reversed(active.values())) if active else None


def observe(consumer: str, attention: AttentionFn | None) -> None:
    """Make ``attention`` take this thread's calls of tokensieve's attention for ``consumer`` (``vision``,
    ``vlm``, ``train``) until replaced; None stops it. ``attention`` must return what SDPA returns for the
    (possibly changed) arguments: it runs instead of SDPA, not after it."""
    active = _active()
    active.pop(consumer, None)
    if attention is not None:
        active[consumer] = attention


def observer(consumer: str) -> AttentionFn | None:
    """The attention function ``consumer`` made active on this thread, or None."""
    return _active().get(consumer)


@contextmanager
def observing(consumer: str, attention: AttentionFn) -> Iterator[None]:
    """``observe(consumer, attention)`` for the block; the consumer's previous observer is back after it."""
    before = observer(consumer)
    observe(consumer, attention)
    try:
        yield
    finally:
        observe(consumer, before)


@contextmanager
def capturing_layer_inputs(model: Any, on: bool = True) -> Iterator[None]:
    """While ``on``, keep each decoder layer's newest attention input for ``take_layer_input`` (the learned
    scorers read it); a reference only, dropped when taken, so no layer's input outlives its observation."""
    if not on:
        yield
        return
    latest: dict[int, Tensor] = {}

    def sink(i: int, x: Tensor) -> None:
        latest[i] = x

    before = getattr(_inputs, "latest", None)
    _inputs.latest = latest
    try:
        with compat.attention_inputs(model, sink):
            yield
    finally:
        _inputs.latest = before


def take_layer_input(layer_idx: int) -> Tensor | None:
    """The attention input [B, T, D] the layer just ran on (None when not capturing)."""
    latest = getattr(_inputs, "latest", None)
    return None if latest is None else latest.pop(layer_idx, None)


def register() -> None:
    compat.register_attention(ATTENTION, sieve_attention)


def check_architecture(model: PreTrainedModel) -> None:
    config = model.config.get_text_config(decoder=True)
    name = getattr(config, "model_type", type(model).__name__)
    fix = f"tokensieve supports decoder-only attention models such as {', '.join(TESTED_MODEL_TYPES)}"
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(f"{name} is an encoder-decoder model: {fix}")
    if not compat.supports_attention_backend(model):
        raise UnsupportedArchitectureError(f"{name} does not route attention through transformers' interface: {fix}")
    if getattr(config, "attn_logit_softcapping", None):
        raise UnsupportedArchitectureError(f"{name} uses attention logit soft-capping, which SDPA cannot run: {fix}")
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if not types <= SUPPORTED_LAYER_TYPES:
        odd = ", ".join(sorted(types - SUPPORTED_LAYER_TYPES))
        raise UnsupportedArchitectureError(f"{name} has layers of type {odd}: {fix}")
    if "full_attention" not in types and getattr(config, "sliding_window", None):
        raise UnsupportedArchitectureError(
            f"{name} has only sliding-window layers, which already bound their cache; nothing to compress "
            "(load it with sliding_window=None to compress full attention)"
        )


def prepare(model: PreTrainedModel) -> PreTrainedModel:
    """Check the architecture and switch the model to tokensieve's attention (idempotent)."""
    check_architecture(model)
    register()
    if compat.attn_implementation(model) != ATTENTION:
        model.set_attn_implementation(ATTENTION)
    return model


def check_engaged(cache: Any, model: Any, what: str, observed: bool = False) -> None:
    """Raise unless every tokensieve layer of ``cache`` that the model updated also ran its attention through
    tokensieve (and at least one was updated): a cache whose attention never reached us compressed nothing.
    ``observed``: the prefill was to run each layer's observer once (a compression plan): check none is left."""
    layers = getattr(cache, "sieve_layers", [])
    if not layers:
        return
    updates = [getattr(layer, "n_updates", 0) for layer in layers]
    attends = [getattr(layer, "n_attends", 0) for layer in layers]
    if not any(updates):
        raise compat.not_engaged(what, model, "the model never updated the cache it was given (renamed argument?)")
    missed = [layer.layer_idx for layer, u, a in zip(layers, updates, attends, strict=True) if a < u]
    if missed:
        raise compat.not_engaged(what, model, f"layers {missed} updated the cache but their attention bypassed it")
    pending = [layer.layer_idx for layer in layers if layer.on_attention is not None]
    if observed and pending:
        raise compat.not_engaged(what, model, f"layers {pending} were never observed after their prefill")


@contextmanager
def engaged(cache: Any, model: Any, what: str, observed: bool = False) -> Iterator[None]:
    """Run a forward or ``generate`` with ``cache``, then ``check_engaged``; a layer found bypassed on the way
    (the bind's stale check) is reported the same way, naming ``what``, the model class and transformers."""
    try:
        yield
    except NotPreparedError as e:
        if isinstance(e, EngagementError):
            raise
        raise compat.not_engaged(what, model, str(e)) from e
    check_engaged(cache, model, what, observed)
