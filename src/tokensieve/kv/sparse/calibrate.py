"""Offline calibration for sparse decoding, computed once per model and cached on disk.

A calibration prefill over bundled prose (or seeded random tokens when there is no tokenizer) captures
each full-attention layer's queries and keys after RoPE; a method turns them into a small per-layer
tensor (outlier channels, dominant RoPE frequency chunks). The result is saved as safetensors under
the one calibration store (``runtime/store.py``) keyed by the method, its parameters and the model's
fingerprint, so the next cache for the same model loads it instead of recomputing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.runtime.store import load_tensors, save_tensors, store_path


@dataclass
class LayerSample:
    """One full-attention layer's calibration tensors: queries ``[Hkv, G, n, D]`` at token indices ``rows``
    and keys ``[Hkv, T, D]`` (after RoPE), with the attention scaling."""

    queries: Tensor
    rows: Tensor
    keys: Tensor
    scaling: float


def calibration_ids(model, tokenizer, n_tokens: int, seed: int = 0) -> Tensor:
    if tokenizer is not None:
        from tokensieve.runtime.corpus import paragraphs

        ids = tokenizer.encode("\n\n".join(paragraphs()), add_special_tokens=True)[:n_tokens]
        if len(ids) >= n_tokens // 2:
            return torch.tensor([ids])
    vocab = model.config.get_text_config(decoder=True).vocab_size
    return torch.randint(3, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(seed))


def sample(model, tokenizer, n_tokens: int) -> list[LayerSample]:
    """Prefill the calibration text once; every full-attention layer's queries (all rows) and keys."""
    from tokensieve.kv.observed import observe_prefill

    ids = calibration_ids(model, tokenizer, n_tokens)
    pre = observe_prefill(model, ids, needs=Needs(window=ids.shape[1]))
    out = []
    for layer in pre.cache.sieve_layers:
        obs = pre.observations[layer.layer_idx]
        out.append(LayerSample(obs.queries[0].float(), obs.rows, layer.keys[0].float(), obs.scaling))
    return out


def calibrated(
    name: str, model, tokenizer, params: dict, n_tokens: int, compute: Callable[[list[LayerSample]], Tensor]
) -> Tensor:
    """``compute(samples)`` -> a tensor with one row per full-attention layer, cached per model and params."""
    path = store_path(model, name, {**params, "n_tokens": n_tokens})
    if path.exists():
        return load_tensors(path)["value"]
    value = compute(sample(model, tokenizer, n_tokens)).contiguous()
    save_tensors(path, {"value": value})
    return value
