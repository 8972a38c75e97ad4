"""The one place that knows transformers internals (anything not public, stable API), split by what it adapts.

Each item says in one line what it relies on. Code elsewhere calls these helpers instead of
touching transformers' private names, so a transformers release that moves one breaks here only.
Tested range: see ``TESTED_TRANSFORMERS`` (the floor and the newest release, both run in CI).

- ``versions``: the release in use, the tested range, ``not_engaged`` (the error of a mechanism that did nothing)
- ``cache``: the forward's cache argument (``cache=`` / ``past_key_values=``), cache objects and their layers
- ``attention``: the SDPA path, registering an attention function, switching a model or its configs to it
- ``layers``: decoder layers: finding and calling them, their outputs, per-token arguments cut to kept tokens
- ``vision``: ViT-family encoders (block list, position-encoding flag, the MLP branch of a block)
- ``vlm``: LLaVA-style vision-language models (the language model under them, the image token, their keywords)

Every name stays importable from ``tokensieve.compat`` itself; patch a helper in its submodule (where it is read).
"""

from __future__ import annotations

from tokensieve.compat.attention import (
    SDPA_MASK,
    attention_layer_index,
    attn_implementation,
    register_attention,
    restore_attention,
    rope_inv_freq,
    rope_inv_freq_per_layer,
    sdpa,
    sdpa_attention,
    set_attention,
    supports_attention_backend,
)
from tokensieve.compat.cache import (  # noqa: F401
    _CACHE_NAMES,
    ENGAGEMENT_COUNTS,
    BaseLayer,
    SlidingLayer,
    _cache_arg_of,
    adopt_layer,
    cache_arg,
    call_cache,
    dynamic_update,
    given_cache,
    init_cache_layers,
    is_sliding_layer,
    layer_types_and_kwargs,
    mark_initialized,
    set_cache_layer,
    with_cache,
)
from tokensieve.compat.gguf import GgufTensor, gguf_layout
from tokensieve.compat.layers import (
    LAYER_MASK_ARG,
    attention_inputs,
    attention_outputs,
    call_layer,
    decoder_layers,
    layer_call,
    layer_hidden,
    layer_output_hidden,
    logits_from_hidden,
    output_projections,
    record_layer_calls,
    replace_layer_output,
    take_keys,
    take_tokens,
)
from tokensieve.compat.versions import (
    TESTED_TRANSFORMERS,
    TRANSFORMERS_VERSION,
    PreTrainedConfig,
    not_engaged,
)
from tokensieve.compat.vision import (  # noqa: F401
    _MLP_NORMS,
    MlpBranch,
    call_residual,
    takes_interpolate_pos_encoding,
    vision_layers,
    vision_mlp_branch,
    with_residual,
)
from tokensieve.compat.vlm import (
    CACHE_POSITION_ARG,
    LM_EMBEDS_ARG,
    LM_MASK_ARG,
    LM_POSITIONS_ARG,
    vlm_parts,
)

__all__ = [
    "CACHE_POSITION_ARG",
    "ENGAGEMENT_COUNTS",
    "LAYER_MASK_ARG",
    "LM_EMBEDS_ARG",
    "LM_MASK_ARG",
    "LM_POSITIONS_ARG",
    "SDPA_MASK",
    "TESTED_TRANSFORMERS",
    "TRANSFORMERS_VERSION",
    "BaseLayer",
    "GgufTensor",
    "MlpBranch",
    "PreTrainedConfig",
    "SlidingLayer",
    "adopt_layer",
    "attention_inputs",
    "attention_layer_index",
    "attention_outputs",
    "attn_implementation",
    "cache_arg",
    "call_cache",
    "call_layer",
    "call_residual",
    "decoder_layers",
    "dynamic_update",
    "gguf_layout",
    "given_cache",
    "init_cache_layers",
    "is_sliding_layer",
    "layer_call",
    "layer_hidden",
    "layer_output_hidden",
    "layer_types_and_kwargs",
    "logits_from_hidden",
    "mark_initialized",
    "not_engaged",
    "output_projections",
    "record_layer_calls",
    "register_attention",
    "replace_layer_output",
    "restore_attention",
    "rope_inv_freq",
    "rope_inv_freq_per_layer",
    "sdpa",
    "sdpa_attention",
    "set_attention",
    "set_cache_layer",
    "supports_attention_backend",
    "take_keys",
    "take_tokens",
    "takes_interpolate_pos_encoding",
    "vision_layers",
    "vision_mlp_branch",
    "vlm_parts",
    "with_cache",
    "with_residual",
]
