"""Per-model calibration on synthetic prompts, cached to a file: which heads retrieve, how much each layer
suffers from eviction. RazorAttention (``razor``) and CompressKV (``compresskv`` method and allocator) use it.

``get_calibration(model)`` loads it from ``$TOKENSIEVE_CALIBRATION`` (default ``~/.cache/tokensieve/calibration``),
keyed by the model's architecture and a fingerprint of its weights, or runs ``calibrate`` once and saves it
(safetensors). ``tokensieve calibrate --model M`` runs it from the command line and prints the head map.

What is measured, per compressible (full-attention) layer and query head:

- ``echo``, ``induction`` [L, H]: on random token sequences repeated twice, the mean attention a query in the
  second copy pays to the previous occurrence of its token (echo) and to the token after it (induction).
- ``retrieval`` [L, H]: on needle-in-a-haystack prompts (bundled prose and a pass key when a tokenizer is
  available, random tokens otherwise), the mean attention mass the question and answer rows pay to the
  needle and ``margin`` tokens around it (CompressKV's semantic retrieval heads).
- ``layer_error`` [L]: the relative error of each layer's attention output (question and answer rows) when the
  layer keeps ``keep`` of its tokens by the CompressKV score: CompressKV's layer budgets follow it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import Tensor

from tokensieve.runtime.store import model_key, store_path

VERSION = 1
_console = Console(stderr=True)
_loaded: dict[str, Calibration] = {}


@dataclass
class Calibration:
    key: str
    layers: list[int]  # model layer index of each calibrated (full-attention) layer
    n_kv_heads: int
    echo: Tensor  # [L, H]
    induction: Tensor  # [L, H]
    retrieval: Tensor  # [L, H]
    layer_error: Tensor  # [L]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return self.echo.shape[1]

    def row(self, layer_idx: int) -> int:
        try:
            return self.layers.index(layer_idx)
        except ValueError:
            raise KeyError(f"layer {layer_idx} was not calibrated (calibrated: {self.layers})") from None

    def per_kv_head(self, scores: Tensor) -> Tensor:
        """[L, H] -> [L, Hkv]: the strongest query head of each GQA group speaks for its KV head."""
        return scores.view(len(self.layers), self.n_kv_heads, -1).amax(-1)

    def retrieval_kv_heads(self, induction: float, echo: float) -> Tensor:
        """Bool [L, Hkv]: the top ``induction`` fraction of KV heads by induction score plus the top ``echo``
        fraction by echo score (RazorAttention's selection, made per KV head)."""
        out = torch.zeros(len(self.layers), self.n_kv_heads, dtype=torch.bool)
        for frac, scores in ((induction, self.induction), (echo, self.echo)):
            kv = self.per_kv_head(scores).flatten()
            n = round(frac * kv.numel())
            if n > 0:
                out.view(-1)[kv.topk(n).indices] = True
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "echo": self.echo.contiguous(),
            "induction": self.induction.contiguous(),
            "retrieval": self.retrieval.contiguous(),
            "layer_error": self.layer_error.contiguous(),
            "layers": torch.tensor(self.layers, dtype=torch.long),
        }
        meta = {"version": str(VERSION), "key": self.key, "n_kv_heads": str(self.n_kv_heads)}
        meta["settings"] = json.dumps(self.settings)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        return cls(
            meta["key"],
            t["layers"].tolist(),
            int(meta["n_kv_heads"]),
            t["echo"],
            t["induction"],
            t["retrieval"],
            t["layer_error"],
            json.loads(meta.get("settings", "{}")),
        )


def calibration_path(model: Any) -> Path:
    return store_path(model)


def _tokenizer_for(model: Any):
    path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if not path or not Path(path).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # no tokenizer there: fall back to random-token prompts
        return None


def get_calibration(model: Any, tokenizer: Any = None, force: bool = False, quiet: bool = False) -> Calibration:
    """The model's calibration: from memory, from its file, or measured now (once) and saved."""
    key = model_key(model)
    if not force and key in _loaded:
        return _loaded[key]
    path = store_path(model)
    if path.exists() and not force:
        cal = Calibration.load(path)
    else:
        if not quiet:
            _console.print(f"[tokensieve] calibrating retrieval heads of {key} (once; cached in {path})")
        cal = calibrate(model, tokenizer if tokenizer is not None else _tokenizer_for(model), key=key)
        cal.save(path)
    _loaded[key] = cal
    return cal


# --- the measurement --------------------------------------------------------------------------------


def repeated_sequences(vocab: int, n_seq: int, period: int, seed: int = 0) -> Tensor:
    """[n_seq, 2 * period] random token ids, each a sequence without repeats followed by itself."""
    low = min(vocab // 16, 1000)
    if vocab - low < period:
        raise ValueError(f"a vocabulary of {vocab} tokens is too small for sequences of {period} distinct tokens")
    g = torch.Generator().manual_seed(seed)
    seqs = torch.stack([torch.randperm(vocab - low, generator=g)[:period] + low for _ in range(n_seq)])
    return torch.cat([seqs, seqs], 1)


@dataclass
class NeedlePrompt:
    ids: Tensor  # [1, T]
    needle: tuple[int, int]  # token span of the needle
    tail: int  # rows after the context: question and answer


def needle_prompts(tokenizer: Any, vocab: int, n_tokens: int, depths: list[float], seed: int = 0) -> list[NeedlePrompt]:
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    if tokenizer is None:
        low = min(vocab // 16, 1000)
        for depth in depths:
            filler = torch.randint(low, vocab, (n_tokens,), generator=g)
            needle = torch.randint(low, vocab, (12,), generator=g)
            question = torch.cat([torch.randint(low, vocab, (6,), generator=g), needle[:4]])
            at = round(depth * n_tokens)
            ids = torch.cat([filler[:at], needle, filler[at:], question, needle[4:]])
            out.append(NeedlePrompt(ids[None], (at, at + 12), len(question) + 8))
        return out
    from tokensieve.runtime.corpus import paragraphs
    from tokensieve.runtime.passkey import QUESTION, needle
    from tokensieve.runtime.prompts import PromptFormat

    fmt = PromptFormat(tokenizer)
    paras = paragraphs()
    for i, depth in enumerate(depths):
        key = "".join(str(int(d)) for d in torch.randint(0, 10, (5,), generator=g))
        chosen, used, j = [], 0, i * 3
        while used < n_tokens:
            p = paras[j % len(paras)] + "\n\n"
            chosen.append(p)
            used += len(tokenizer.encode(p, add_special_tokens=False))
            j += 1
        at = round(depth * len(chosen))
        prefix, suffix = "".join(chosen[:at]), "".join(chosen[at:])
        head = fmt.context_ids(prefix)
        mid = tokenizer.encode(needle(key) + "\n\n", add_special_tokens=False)
        tail_ctx = tokenizer.encode(suffix.rstrip(), add_special_tokens=False)
        question = fmt.question_ids(QUESTION, "The pass key is")
        answer = tokenizer.encode(" " + key, add_special_tokens=False)
        ids = torch.tensor([head + mid + tail_ctx + question + answer])
        out.append(NeedlePrompt(ids, (len(head), len(head) + len(mid)), len(question) + len(answer)))
    return out


def calibrate(
    model: Any,
    tokenizer: Any = None,
    key: str | None = None,
    period: int = 128,
    n_seq: int = 4,
    n_tokens: int = 600,
    depths: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8),
    margin: int = 8,
    keep: float = 0.25,
    seed: int = 0,
) -> Calibration:
    """Measure echo / induction / retrieval scores per head and eviction errors per layer (see the module)."""
    from tokensieve.core.observe.capture import Needs
    from tokensieve.core.scores.retrieval import echo_induction, output_error, span_mass, srh_scores
    from tokensieve.kv.observed import layer_inputs, observe_prefill

    cfg = model.config.get_text_config(decoder=True)
    vocab = cfg.vocab_size
    period = max(2, min(period, (vocab - min(vocab // 16, 1000)) // 2))
    n_tokens = min(n_tokens, max(64, getattr(cfg, "max_position_embeddings", n_tokens) // 4))

    # echo and induction: random sequences repeated twice
    ids = repeated_sequences(vocab, n_seq, period, seed)
    pre = observe_prefill(model, ids, needs=Needs(window=period))
    layers = [layer.layer_idx for layer in pre.cache.sieve_layers]
    n_kv = pre.cache.sieve_layers[0].keys.shape[1]
    echo, induction = [], []
    for _, x in layer_inputs(pre.cache, pre.observations):
        e, i = echo_induction(x.window_probs(period), period)
        echo.append(e.mean(0).flatten())
        induction.append(i.mean(0).flatten())
    del pre

    # semantic retrieval and layer errors: needle prompts, teacher-forced answers
    prompts = needle_prompts(tokenizer, vocab, n_tokens, list(depths), seed)
    pres = [observe_prefill(model, p.ids, needs=Needs(window=p.tail)) for p in prompts]
    retrieval = torch.zeros(len(layers), echo[0].numel())
    for p, pre in zip(prompts, pres, strict=True):
        for r, (_, x) in enumerate(layer_inputs(pre.cache, pre.observations)):
            retrieval[r] += span_mass(x.window_probs(p.tail), *p.needle, margin).mean(0).flatten() / len(prompts)
    layer_error = torch.zeros(len(layers))
    for p, pre in zip(prompts, pres, strict=True):
        for r, (layer, x) in enumerate(layer_inputs(pre.cache, pre.observations)):
            probs = x.window_probs(p.tail)
            score = srh_scores(probs, retrieval[r], heads=2)
            t = score.shape[-1]
            k = max(1, round(keep * t))
            kept = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(k, -1).indices, True)
            kept[..., t - p.tail :] = True  # the observed rows' own tokens stay, as a protected window would
            layer_error[r] += output_error(probs, layer.values, kept).mean() / len(prompts)
    settings = dict(period=period, n_seq=n_seq, n_tokens=n_tokens, depths=list(depths), margin=margin, keep=keep)
    settings["prompts"] = "text" if tokenizer is not None else "random tokens"
    return Calibration(
        key or model_key(model),
        layers,
        n_kv,
        torch.stack(echo),
        torch.stack(induction),
        retrieval,
        layer_error,
        settings,
    )
