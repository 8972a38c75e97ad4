"""Learned KV scorers (``kvzap``, ``fastkvzip``): their per-layer weights in the one calibration store, keyed by the
model, and their forward functions. Trained here by ``tokensieve calibrate --learned ...`` (``kv/learn.py``),
never downloaded; a model with no trained scorer gets a ``CalibrationError`` naming that command.

Every scorer reads one layer's attention input ``x [B, T, D]`` (the output of its pre-attention norm, captured by
the prefill: ``Needs.layer_input``) and returns ``[B, Hkv, T]`` (larger = keep):

- ``ridge``: ``[x, 1] @ W`` -> the predicted ``log`` of kvzip's score (KVzap's linear form);
- ``mlp``: ``gelu(x @ W1 + b1) @ W2 + b2`` -> the same target (KVzap's MLP);
- ``gate``: Fast KVzip's gate: a 16-dim RMS-normed query per query head and key per KV head from ``x``; the
  token's own key competes in a softmax against learned sink keys; the gate (the own key's share, in (0, 1)) is
  averaged over the GQA group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.errors import CalibrationError
from tokensieve.runtime.store import load_tensors, model_key, save_tensors, store_dir, store_path

FORMS = ("ridge", "mlp", "gate")
METHOD_OF = {"ridge": "kvzap", "mlp": "kvzap", "gate": "fastkvzip"}  # the method whose training makes each form
VERSION = 1
_loaded: dict[tuple[str, str], LearnedScorer] = {}


@dataclass
class LearnedScorer:
    """One trained scorer of one model: ``form`` and its tensors per layer (``"{layer}.{name}"``), plus what the
    training recorded (data size, seconds, validation figures) in ``meta``."""

    form: str
    key: str
    tensors: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def layer(self, layer_idx: int) -> dict[str, Tensor]:
        prefix = f"{layer_idx}."
        out = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if not out:
            raise CalibrationError(f"the trained {self.form} scorer of {self.key} has no layer {layer_idx}")
        return out

    def score(self, layer_idx: int, x: Tensor) -> Tensor:
        """``[B, Hkv, T]`` for the attention input ``x [B, T, D]`` of layer ``layer_idx``."""
        return predict(self.form, self.layer(layer_idx), x.float())

    def save(self, model: Any) -> None:
        meta = {"form": self.form, "key": self.key, "version": str(VERSION), "meta": json.dumps(self.meta)}
        save_tensors(path_of(model, self.form), self.tensors, meta)
        _loaded[(self.form, self.key)] = self


def path_of(model: Any, form: str) -> Any:
    return store_path(model, f"learned-{form}", {"version": VERSION})


def load_scorer(model: Any, form: str, method: str = "") -> LearnedScorer:
    """The model's trained ``form`` scorer (from memory or the store), or a one-line error naming the command."""
    key = model_key(model)
    if (form, key) in _loaded:
        return _loaded[(form, key)]
    path = path_of(model, form)
    if not path.exists():
        raise CalibrationError(
            f"no trained {method or form} scorer ({form}) for {key} in {store_dir()}: train it with "
            f"`tokensieve calibrate --model <this model> --learned {METHOD_OF.get(form, form)}`"
        )
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    scorer = LearnedScorer(form, key, load_tensors(path), json.loads(meta.get("meta", "{}")))
    _loaded[(form, key)] = scorer
    return scorer


def forget() -> None:
    """Drop the scorers held in memory (a test or a retraining reloads from the store)."""
    _loaded.clear()


# --- the forms' forward functions (training runs the same ones) ---------------------------------------------------


def predict(form: str, p: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x [B, T, D]`` -> ``[B, Hkv, T]`` for one layer's parameters ``p``."""
    if form == "ridge":
        out = x @ p["w"] + p["b"]
    elif form == "mlp":
        out = F.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    elif form == "gate":
        out = gate(p, x)
    else:
        raise CalibrationError(f"unknown learned form {form!r}; choose from {', '.join(FORMS)}")
    return out.transpose(-1, -2)


def rms(v: Tensor, eps: float = 1e-6) -> Tensor:
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)


def gate(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """Fast KVzip's gate ``[B, T, Hkv]``: ``p`` holds ``wq [D, Hkv*G*d]``, ``wk [D, Hkv*d]``, ``sinks [Hkv, S, d]``
    and a per-head log temperature ``tau [Hkv]``."""
    h, _, d = p["sinks"].shape
    b, t, _ = x.shape
    k = rms((x @ p["wk"]).view(b, t, h, d))
    q = rms((x @ p["wq"]).view(b, t, h, -1, d))  # [B, T, Hkv, G, d]
    scale = p["tau"].exp()[:, None] / d**0.5
    own = (q * k[:, :, :, None]).sum(-1) * scale  # [B, T, Hkv, G]
    sinks = torch.einsum("bthgd,hsd->bthgs", q, rms(p["sinks"])) * scale[..., None]
    logits = torch.cat([own[..., None], sinks], -1)
    return logits.softmax(-1)[..., 0].mean(-1)
