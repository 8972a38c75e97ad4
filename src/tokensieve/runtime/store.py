"""The one calibration store: per-model tensors in safetensors files under ``$TOKENSIEVE_CALIBRATION`` (default
``<cache dir>/calibration``), keyed by one model fingerprint. Every calibrated method (retrieval heads, CompressKV
layer errors, sparse-decoding channels and chunks) keeps its results here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tokensieve.runtime.models import cache_dir

KEY_VERSION = 1


def model_key(model: Any) -> str:
    """Architecture + a fingerprint of the weights (a strided sample of every parameter): a model fine-tuned or
    re-initialised gets its own calibration."""
    cfg = model.config.get_text_config(decoder=True)
    h = hashlib.sha1()
    for name in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        h.update(f"{name}={getattr(cfg, name, None)};".encode())
    h.update(f"v{KEY_VERSION};".encode())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 2048)].float().cpu().contiguous()
            h.update(name.encode())
            h.update(sample.numpy().tobytes())
    return f"{getattr(cfg, 'model_type', 'model')}-{h.hexdigest()[:16]}"


def store_dir() -> Path:
    env = os.environ.get("TOKENSIEVE_CALIBRATION")
    return Path(env) if env else cache_dir() / "calibration"


def store_path(model: Any, name: str | None = None, params: dict[str, Any] | None = None) -> Path:
    """The file for ``model`` (and, for a method's own calibration, its ``name`` and ``params``)."""
    key = model_key(model)
    if name is None:
        return store_dir() / f"{key}.safetensors"
    digest = hashlib.sha1(json.dumps(params or {}, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return store_dir() / f"{name}-{key}-{digest}.safetensors"


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_tensors(path: Path) -> dict[str, Tensor]:
    return load_file(str(path))
