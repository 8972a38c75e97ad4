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
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.errors import CalibrationError
from tokensieve.runtime import corpus
from tokensieve.runtime.store import load_tensors, model_key, save_tensors, store_dir, store_path

TRAIN_SOURCES = ("python-docs", "debian-reference", "licenses")
HAYSTACK_SOURCES = corpus.DEFAULT_SOURCES  # what measure/tasks/haystack builds contexts from: never trained on
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


def training_texts(tokenizer: Any, n: int, tokens: int, sources=TRAIN_SOURCES, seed: int = 0) -> list[str]:
    """``n`` texts of about ``tokens`` tokens, each a run of consecutive paragraphs from a seeded start."""
    bad = sorted(set(sources) & set(HAYSTACK_SOURCES))
    if bad:
        raise CalibrationError(f"the sources {', '.join(bad)} make the benchmark's haystacks: train on others")
    try:
        paras = corpus.prose_paragraphs(tuple(sources))
    except FileNotFoundError as e:
        raise CalibrationError(f"a training corpus is missing: {e}") from None
    haystack = set(corpus.prose_paragraphs(HAYSTACK_SOURCES))
    paras = tuple(p for p in paras if p not in haystack)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i, chosen, used = rng.randrange(len(paras)), [], 0
        while used < tokens:
            p = paras[i % len(paras)]
            chosen.append(p)
            used += len(tokenizer.encode(p, add_special_tokens=False)) + 2
            i += 1
        ids = tokenizer.encode("\n\n".join(chosen), add_special_tokens=False)[:tokens]
        out.append(tokenizer.decode(ids))
    return out


@dataclass
class HeadSample:
    """One full-attention layer of a calibration prefill: queries ``[Hkv, G, n, D]`` at token indices ``rows``,
    keys ``[Hkv, T, D]`` (after RoPE) and the attention scaling."""

    queries: Tensor
    rows: Tensor
    keys: Tensor
    scaling: float


def head_calibration(
    name: str, model: Any, tokenizer: Any, params: dict[str, Any], n_tokens: int,
    compute: Callable[[list[HeadSample]], Tensor], command: str = "", force: bool = False,
) -> Tensor:  # fmt: skip
    """``compute(samples)`` over one prefill of ``n_tokens`` of the training corpus (seeded random tokens without a
    tokenizer): a tensor with a row per full-attention layer, cached in the store per model and ``params``. With a
    ``command`` a missing calibration is a one-line error naming it (the method never calibrates silently);
    ``force`` recomputes it (what that command runs)."""
    from tokensieve.kv.observed import observe_prefill

    path = store_path(model, name, {**params, "n_tokens": n_tokens})
    if path.exists() and not force:
        return load_tensors(path)["value"]
    if command and not force:
        raise CalibrationError(f"no {name} calibration for {model_key(model)} in {store_dir()}: run `{command}`")
    if tokenizer is not None:
        text = training_texts(tokenizer, 1, n_tokens, seed=1)[0]
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=True)[:n_tokens]])
    else:
        vocab = model.config.get_text_config(decoder=True).vocab_size
        ids = torch.randint(3, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(1))
    pre = observe_prefill(model, ids, needs=Needs(window=ids.shape[1]))
    samples = []
    for layer in pre.cache.sieve_layers:
        obs = pre.observations[layer.layer_idx]
        samples.append(HeadSample(obs.queries[0].float(), obs.rows, layer.keys[0].float(), obs.scaling))
    value = compute(samples).contiguous()
    save_tensors(path, {"value": value})
    return value


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
