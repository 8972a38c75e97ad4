"""Attention through transformers' interface: the SDPA path, registering an attention function, switching to it."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# --- attention -----------------------------------------------------------------------------------------------------
# Relies on: `sdpa_attention_forward(module, q, k, v, mask, **kw)` is the SDPA path models call, `sdpa_mask` builds
# SDPA's boolean masks, both interfaces take `register(name, fn)`, a model sets `_supports_attention_backend` when
# its attention goes through the interface, and `config._attn_implementation` names the one in use.
SDPA_MASK = sdpa_mask

_GQA = "enable_gqa" in (torch.nn.functional.scaled_dot_product_attention.__doc__ or "")  # torch >= 2.5


def sdpa(module: torch.nn.Module, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
    """transformers' SDPA path, except where it would copy every KV head ``groups`` times (``repeat_kv``: a masked
    multi-query block on CPU) and torch can group the heads itself (``enable_gqa``, torch >= 2.5; transformers only
    groups them without a mask). Same kernel, bit-identical output on CPU (``tests/test_compat.py``); the copy is
    ``groups - 1`` times a layer's keys and values, the largest transient of a block-wise prefill."""
    groups = getattr(module, "num_key_value_groups", 1)
    plain = (
        groups == 1
        or mask is None
        or query.shape[2] == 1  # transformers packs a single query's group instead, no copy
        or query.device.type != "cpu"  # CUDA's masked GQA falls back to the math kernel (transformers' reason)
        or not _GQA
        or kwargs.get("dropout", 0.0)
        or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None  # of the kwargs, only these change what transformers runs
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=kwargs.get("scaling"), enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None



def register_attention(name: str, attention: Any, mask: Any = sdpa_mask) -> None:
    transformers.AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)


def supports_attention_backend(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "_supports_attention_backend", False))


def attn_implementation(model: torch.nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


# Relies on: an attention layer calls `cache.update(...)` and then its attention function right away, on the same
# thread, with the keys `update` returned: `core.observe.hooks` binds the layer in `update` and picks it up there.
# `core.observe.hooks.check_engaged` turns a break of that order (attention never reached us) into an error.


# --- running SDPA and switching a model to a registered attention ---
def sdpa_attention(module: torch.nn.Module, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
    """transformers' own SDPA attention function (integrations.sdpa_attention.sdpa_attention_forward)."""
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


def attention_layer_index(module: torch.nn.Module) -> int | None:
    """The decoder layer an attention module belongs to: its ``layer_idx`` attribute (Llama-style modules)."""
    return getattr(module, "layer_idx", None)


# --- rotary position encoding (expected-attention scores) ---
def rope_inv_freq(model: torch.nn.Module) -> torch.Tensor | None:
    """The rotary inverse frequencies [D/2] of a model, or None: relies on HF's rotary modules keeping them in a
    buffer named `inv_freq` (the first one found; Gemma-3's local/global layers may differ)."""
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            return buf.detach().float().cpu()
    return None


def rope_inv_freq_per_layer(model: torch.nn.Module) -> list[torch.Tensor | None]:
    """The rotary inverse frequencies [D/2] each decoder layer's keys were rotated with (None: no RoPE): relies on
    HF's rotary modules keeping them in a buffer `inv_freq`, or one `<layer_type>_inv_freq` per entry of
    `config.layer_types` (Gemma-3's local and global layers), and on the buffers already holding any scaling of the
    frequencies (llama3, linear, yarn: the attention factor scales cos and sin alike, so a further rotation by a
    shift needs only the frequencies)."""
    config = model.config.get_text_config(decoder=True)
    buffers = {name.rsplit(".", 1)[-1]: buf.detach().float().cpu() for name, buf in model.named_buffers()}
    plain = buffers.get("inv_freq")
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return [buffers.get(f"{kind}_inv_freq", plain) for kind in types]
