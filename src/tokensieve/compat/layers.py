"""Decoder layers: how they are found and called, their outputs, and per-token arguments cut to kept tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


# --- the decoder-layer call convention ----------------------------------------------------------------------------
# Relies on: decoder layers are called as `layer(hidden_states, attention_mask=..., position_ids=...,
# position_embeddings=(cos, sin), cache=..., ...)`, hidden states positional or as `hidden_states=`, the mask a
# 4-D [B, 1, Q, K] tensor (or None) and every other per-token argument with its token axis at 1 (0 when 1-D).
def layer_hidden(args: tuple, kwargs: dict[str, Any]) -> Any:
    """The hidden states a decoder layer is called with (positional, or popped from ``kwargs``)."""
    return args[0] if args else kwargs.pop("hidden_states")


def layer_call(hidden: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """What a forward pre-hook returns to call the layer on ``hidden`` instead, everything else as given."""
    return (hidden, *args[1:]), kwargs


LAYER_MASK_ARG = "attention_mask"  # the 4-D mask's keyword in a decoder layer's call

# --- finding, recording and calling decoder layers (quantize, vlm) ---


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, in order."""
    # relies on: `get_decoder()` returning the base model, which keeps its blocks as `.layers`
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{type(model).__name__} keeps no `.layers` list in its decoder")
    return layers


def output_projections(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Each decoder layer's attention output projection ``W_O [hidden, H * D]`` (query head h's slice is columns
    h*D .. h*D + D - 1), by layer index."""
    # relies on: each block keeping its attention as `.self_attn` with a linear `.o_proj` (Llama, Qwen, Mistral, Gemma)
    return {i: layer.self_attn.o_proj.weight.detach() for i, layer in enumerate(decoder_layers(model))}


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


@contextlib.contextmanager
def attention_inputs(model: torch.nn.Module, sink: Any) -> Iterator[int]:
    """Call ``sink(layer_idx, x)`` with each decoder layer's attention input ``x`` [B, T, D] (the output of its
    pre-attention norm) during the forwards inside the block; yields how many layers were hooked."""
    # relies on: each decoder block keeping its pre-attention norm as `input_layernorm` (llama, mistral, qwen2/3,
    # gemma3) and feeding its output to self-attention; the hook only reads it (outputs unchanged)
    layers = decoder_layers(model)
    norms = [getattr(layer, "input_layernorm", None) for layer in layers]
    if any(n is None for n in norms):
        raise TypeError(f"{type(model).__name__}'s decoder layers keep no `input_layernorm`")

    def hook(i: int):
        def post(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            sink(i, output)

        return post

    handles = [norm.register_forward_hook(hook(i)) for i, norm in enumerate(norms)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def attention_outputs(model: torch.nn.Module, on_attention: Any, on_last: Any) -> Iterator[int]:
    """During the forwards inside the block, call ``on_attention(layer_idx, a)`` with each decoder layer's attention
    output ``a`` [B, T, hidden] (after its output projection, before any post-attention norm and the residual add)
    and ``on_last(h)`` with the last decoder layer's output hidden states (before the final norm); yields how many
    layers were hooked. The tensors are the graph's own (a caller can take gradients with respect to them)."""
    # relies on: each decoder block keeping its attention as `.self_attn`, whose output is a tuple with the
    # projected attention output first (llama, mistral, qwen2/3, gemma3); the hooks only read (outputs unchanged)
    layers = decoder_layers(model)

    def hook(i: int):
        def post(module: torch.nn.Module, args: tuple, output: Any) -> None:
            on_attention(i, output[0] if isinstance(output, tuple) else output)

        return post

    def last(module: torch.nn.Module, args: tuple, output: Any) -> None:
        on_last(layer_output_hidden(output))

    handles = [layer.self_attn.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(last))
    try:
        yield len(layers)
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


def replace_layer_output(output: Any, hidden: torch.Tensor) -> Any:
    """A layer's output with its hidden states replaced (a tensor in 5.x, the first item of a tuple before)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def layer_output_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def take_tokens(x: Any, rows: torch.Tensor, n: int) -> Any:
    """A per-token layer argument restricted to positions ``rows`` [B, k] of ``n`` (the decoder-layer call
    convention above): token axis 1 (broadcast batch expanded), a 4-D [B, 1, n, n] mask on both last axes, a
    1-D ``cache_position`` to its first k slots (the kept tokens fill the cache from its start), tuples
    element-wise; anything else as is."""
    if isinstance(x, tuple | list):
        return type(x)(take_tokens(v, rows, n) for v in x)
    if not isinstance(x, torch.Tensor):
        return x
    b, k = rows.shape
    if x.dim() == 4 and x.shape[-2:] == (n, n):
        x = x.expand(b, *x.shape[1:])
        x = x.gather(2, rows[:, None, :, None].expand(-1, x.shape[1], -1, n))
        return x.gather(3, rows[:, None, None, :].expand(-1, x.shape[1], k, -1))
    if x.dim() >= 2 and x.shape[1] == n:
        x = x.expand(b, *x.shape[1:])
        return x.gather(1, rows.view(b, k, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
    if x.dim() == 1 and x.shape[0] == n:
        return x[:k]
    return x


def take_keys(mask: Any, cols: torch.Tensor) -> Any:
    """A 4-D [B, 1, q, K] mask restricted to key columns ``cols`` [B, K'] (None stays None)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        return mask
    mask = mask.expand(cols.shape[0], *mask.shape[1:])
    return mask.gather(3, cols[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1))
