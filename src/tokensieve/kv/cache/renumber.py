"""Renumbering a compressed cache's positions (key re-rotation): every kept key is turned from the position it was
rotated at to its slot's index, so the n held slots sit at positions 0 .. n-1 and the next token comes at n.

Full-attention layers: slot j of head h held the token at position ``token_index[b, h, j]``; its key is rotated by
``j - token_index`` (RoPE composes: R(j - p) R(p) = R(j)). Sliding-window layers hold the context's last tokens:
they keep the last ``min(held, n)`` of them, shifted by the same ``n - seen`` as the context's end, so the newest
context token sits at n - 1 in every layer and the window's relative distances are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.scores.rope import rotate
from tokensieve.errors import BudgetError, UnsupportedArchitectureError
from tokensieve.kv.cache.layers import SieveLayer
from tokensieve.kv.cache.sieve import CompressibleCache
from tokensieve.kv.cache.window import WindowLayer


def rotated(keys: Tensor, shift: Tensor, inv_freq: Tensor | None) -> Tensor:
    """``keys [B, H, n, D]`` turned by ``shift [B, H, n]`` positions (computed in fp32, stored in the keys' dtype)."""
    if inv_freq is None:
        return keys
    if 2 * inv_freq.numel() != keys.shape[-1]:
        raise UnsupportedArchitectureError(
            f"re-rotation needs RoPE over the whole head ({keys.shape[-1]} channels), not {2 * inv_freq.numel()}"
        )
    angles = shift.float()[..., None] * inv_freq.to(keys.device)
    return rotate(keys.float(), angles).to(keys.dtype)


def renumber(cache: CompressibleCache, inv_freqs: list[Tensor | None], context_mask: Tensor | None) -> Tensor | None:
    """Renumber every layer of ``cache`` in place to positions 0 .. n-1, n the slots each full layer holds; returns
    the slot indices ``[B, n]`` of the tokens the first full layer's first head holds (what the shorter context
    reads as), or None when nothing was evicted (positions already contiguous: the cache is left untouched)."""
    layers = cache.sieve_layers
    if any(type(layer) is not SieveLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers if type(layer) is not SieveLayer})
        raise BudgetError(f"rerotate renumbers dense layers, not {', '.join(kinds)}: use a per-layer score "
                          "(base=kvzip/scope=layer, base=snapkv, ...) with the uniform allocator")  # fmt: skip
    held = {layer.n_held for layer in layers}
    if len(held) > 1:
        raise BudgetError(f"rerotate needs every layer to hold as many tokens (held {sorted(held)}): uniform allocator")
    if not layers or all(layer.token_index is None for layer in layers):
        return None
    n, seen = held.pop(), layers[0].cumulative_length
    first = None
    for layer in layers:
        b, h = layer.keys.shape[:2]
        index = layer.token_index
        if index is None:
            index = torch.arange(n, device=layer.keys.device).expand(b, h, n)
        first = index[:, 0] if first is None else first
        layer.keys = rotated(layer.keys, torch.arange(n, device=index.device) - index, inv_freqs[layer.layer_idx])
        layer.token_index, layer.cumulative_length = None, n
    for i, layer in enumerate(cache.layers):
        if compat.is_sliding_layer(layer) and layer.is_initialized:
            window = layer if isinstance(layer, WindowLayer) else WindowLayer.from_sliding(
                layer, i, layer.keys.shape[-2], context_mask)  # fmt: skip
            compat.set_cache_layer(cache, i, shifted(window, n, seen, inv_freqs[i]))
    return first


def shifted(layer: WindowLayer, n: int, seen: int, inv_freq: Tensor | None) -> WindowLayer:
    """A window's last ``min(held, n)`` slots moved by ``n - seen`` positions (its newest at n - 1)."""
    m = min(layer.n_held, n)
    layer.keys, layer.values = layer.keys[..., -m:, :], layer.values[..., -m:, :]
    layer.token_index = layer.token_index[..., -m:] + (n - seen)
    layer.valid = None if layer.valid is None or bool(layer.valid[:, -m:].all()) else layer.valid[:, -m:]
    layer.keys = rotated(layer.keys, torch.full_like(layer.token_index, n - seen), inv_freq).contiguous()
    layer.cumulative_length = n
    return layer
