"""Offline calibration for sparse decoding, computed once per model and cached on disk.

A calibration prefill over bundled prose (or seeded random tokens when there is no tokenizer) captures
each full-attention layer's queries and keys after RoPE; a method turns them into a small per-layer
tensor (outlier channels, dominant RoPE frequency chunks). The result is saved as safetensors under
``<cache dir>/calibration/`` keyed by the method, its parameters and a fingerprint of the model's
configuration and weights, so the next cache for the same model loads it instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.runtime.models import cache_dir


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


def fingerprint(model) -> str:
    """The model's configuration, parameter names and shapes, and a sample of the first and last weights."""
    h = hashlib.sha1(model.config.to_json_string(use_diff=False).encode())
    state = model.state_dict()
    for name, t in state.items():
        h.update(f"{name}{tuple(t.shape)}".encode())
    for name in (next(iter(state)), next(reversed(state))):
        h.update(state[name].detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def sample(model, tokenizer, n_tokens: int) -> list[LayerSample]:
    """Prefill the calibration text once; every full-attention layer's queries (all rows) and keys."""
    from tokensieve.kv.pipeline import prefill

    ids = calibration_ids(model, tokenizer, n_tokens)
    pre = prefill(model, None, ids, needs=Needs(window=ids.shape[1]))
    out = []
    for layer in pre.cache.sieve_layers:
        obs = pre.observations[layer.layer_idx]
        out.append(LayerSample(obs.queries[0].float(), obs.rows, layer.keys[0].float(), obs.scaling))
    return out


def calibrated(
    name: str, model, tokenizer, params: dict, n_tokens: int, compute: Callable[[list[LayerSample]], Tensor]
) -> Tensor:
    """``compute(samples)`` -> a tensor with one row per full-attention layer, cached per model and params."""
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    path = Path(cache_dir()) / "calibration" / f"{name}-{fingerprint(model)}-{key}-{n_tokens}.safetensors"
    if path.exists():
        return load_file(str(path))["value"]
    value = compute(sample(model, tokenizer, n_tokens)).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"value": value}, str(tmp))
    tmp.replace(path)
    return value
