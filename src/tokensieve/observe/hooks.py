"""The one place tokensieve meets a model's forward: a registered attention function.

``prepare(model)`` registers an attention implementation named ``tokensieve`` (SDPA underneath) and
switches the model to it; nothing is patched at import time. A ``SieveLayer`` binds itself when the
model updates it, and the attention call that follows picks the binding up: that is how the layer
gets its per-layer mask after eviction and sees the queries it must observe. Layers that are not ours
(sliding-window layers, a plain ``DynamicCache``) run exactly the SDPA path.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..errors import NotPreparedError, UnsupportedArchitectureError

if TYPE_CHECKING:
    from ..cache import SieveLayer

ATTENTION = "tokensieve"
SUPPORTED_LAYER_TYPES = {"full_attention", "sliding_attention"}
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")

_bound = threading.local()


def bind(layer: SieveLayer) -> None:
    stale = getattr(_bound, "layer", None)
    if stale is not None and stale is not layer and stale.needs_tokensieve_attention:
        _bound.layer = None
        raise NotPreparedError(
            "the model is not using tokensieve's attention, so a compressed or observing cache cannot work: "
            "call tokensieve.prepare(model) (or build the cache with SieveCache(model, ...))"
        )
    _bound.layer = layer


def sdpa(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs: Any):
    """transformers' own SDPA attention: the exact path every layout falls back to."""
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


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
        return sdpa(module, query, key, value, attention_mask, **kwargs)
    return layer.attend(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    AttentionInterface.register(ATTENTION, sieve_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def check_architecture(model: PreTrainedModel) -> None:
    config = model.config.get_text_config(decoder=True)
    name = getattr(config, "model_type", type(model).__name__)
    fix = f"tokensieve supports decoder-only attention models such as {', '.join(TESTED_MODEL_TYPES)}"
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(f"{name} is an encoder-decoder model: {fix}")
    if not getattr(model, "_supports_attention_backend", False):
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
    if model.config._attn_implementation != ATTENTION:
        model.set_attn_implementation(ATTENTION)
    return model
