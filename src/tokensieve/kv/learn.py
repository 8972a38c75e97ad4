"""Training the learned KV scorers here (``tokensieve calibrate --learned kvzap,fastkvzip``): targets from our own
``kvzip`` pass on the project's offline corpora, never the benchmark's haystacks, with a validation split.

1. ``training_texts``: windows of consecutive paragraphs from ``TRAIN_SOURCES`` (Python's documentation sources
   without the parts ``pydoc`` is cut from, the Debian Reference, the licence texts). The check: a source the
   haystacks are made of (``HAYSTACK_SOURCES``) is refused, and any paragraph that also occurs in a haystack
   source is dropped.
2. ``collect``: each text is prefilled once with every layer's attention input captured (``Needs.layer_input``) and
   scored by ``kvzip``; per layer, ridge's sufficient statistics over every token, and ``rows`` sampled tokens per
   text (features and targets) for the iterative fits. The last ``val`` texts are the validation split.
3. ``fit_ridge`` (closed form, the ridge strength chosen on the validation split), ``fit_mlp`` and ``fit_gate``
   (AdamW, the best epoch on the validation split kept); targets: ``log`` of kvzip's score (ridge, mlp) or the score
   itself in [0, 1] (gate, binary cross-entropy).

What was trained on, how long it took and the validation figures are saved with the weights (``meta``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.errors import CalibrationError
from tokensieve.kv.learned import TRAIN_SOURCES, LearnedScorer, predict, training_texts
from tokensieve.kv.methods import get_method
from tokensieve.kv.pipeline import prefill
from tokensieve.kv.scoring import score_prefill
from tokensieve.runtime.store import model_key

FORMS_OF = {"kvzap": ("ridge", "mlp"), "fastkvzip": ("gate",)}
EPS = 1e-6  # floor of kvzip's score before the log


@dataclass
class LayerData:
    gram: Tensor  # [D+1, D+1] of [x, 1], every training token
    xty: Tensor  # [D+1, Hkv]
    train_x: list[Tensor] = field(default_factory=list)  # sampled rows [n, D]
    train_s: list[Tensor] = field(default_factory=list)  # their kvzip scores [n, Hkv]
    val_x: list[Tensor] = field(default_factory=list)
    val_s: list[Tensor] = field(default_factory=list)


@dataclass
class Collected:
    layers: dict[int, LayerData]
    n_train_tokens: int = 0
    n_val_tokens: int = 0
    seconds: float = 0.0

    def rows(self, layer: int, split: str) -> tuple[Tensor, Tensor]:
        d = self.layers[layer]
        xs, ss = (d.train_x, d.train_s) if split == "train" else (d.val_x, d.val_s)
        return torch.cat(xs), torch.cat(ss)


def collect(model: Any, tokenizer: Any, contexts: list[Any], val: int, rows: int, seed: int = 0) -> Collected:
    """Prefill and kvzip-score each context (text or ids); the last ``val`` are the validation split."""
    kvzip = get_method("kvzip")
    g = torch.Generator().manual_seed(seed)
    out = Collected({})
    start = time.perf_counter()
    for n, ctx in enumerate(contexts):
        is_val = n >= len(contexts) - val
        pre = prefill(model, tokenizer, ctx, methods=[kvzip], needs=Needs(layer_input=True))
        scores = score_prefill(pre, kvzip)
        for layer in pre.cache.sieve_layers:
            i = layer.layer_idx
            x = pre.observations[i].layer_input[0].float()  # [T, D]
            s = scores[i][0].float().T  # [T, Hkv]
            if pre.context_mask is not None:
                keep = pre.context_mask[0].bool()
                x, s = x[keep], s[keep]
            d = out.layers.get(i)
            if d is None:
                d = out.layers[i] = LayerData(torch.zeros(x.shape[1] + 1, x.shape[1] + 1, dtype=torch.float64),
                                              torch.zeros(x.shape[1] + 1, s.shape[1], dtype=torch.float64))  # fmt: skip
            pick = torch.randperm(x.shape[0], generator=g)[:rows]
            if is_val:
                d.val_x.append(x[pick])
                d.val_s.append(s[pick])
                continue
            x1 = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()
            d.gram += x1.T @ x1
            d.xty += x1.T @ torch.log(s.clamp_min(EPS)).double()
            d.train_x.append(x[pick])
            d.train_s.append(s[pick])
        t = int(pre.context_tokens)
        if is_val:
            out.n_val_tokens += t
        else:
            out.n_train_tokens += t
        del pre, scores
    out.seconds = time.perf_counter() - start
    return out


def _corr(pred: Tensor, target: Tensor) -> float:
    """Mean over heads of Pearson's r between prediction and target ``[n, H]``."""
    p, t = pred - pred.mean(0), target - target.mean(0)
    r = (p * t).sum(0) / (p.norm(dim=0) * t.norm(dim=0)).clamp_min(1e-12)
    return float(r.mean())


def fit_ridge(gram: Tensor, xty: Tensor, val_x: Tensor, val_y: Tensor, alphas=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)):
    """Closed-form ridge on the statistics (the bias unpenalised); the strength with the lowest validation MSE.
    Returns (params, {alpha, val_mse, val_r})."""
    d = gram.shape[0] - 1
    scale = float(gram.diagonal()[:d].mean())
    best = None
    for a in alphas:
        reg = torch.zeros_like(gram)
        reg.diagonal()[:d] = a * scale
        w = torch.linalg.solve(gram + reg, xty).float()
        p = {"w": w[:d], "b": w[d]}
        pred = predict("ridge", p, val_x[None])[0].T
        mse = float(((pred - val_y) ** 2).mean())
        if best is None or mse < best[1]["val_mse"]:
            best = (p, {"alpha": a, "val_mse": mse, "val_r": _corr(pred, val_y)})
    assert best is not None
    return best


def _adamw_fit(params: dict[str, Tensor], loss_of, val_loss_of, epochs: int, n: int, batch: int, lr: float, seed: int):
    """Minimise ``loss_of(params, idx)`` over shuffled batches; keep the epoch with the lowest validation loss."""
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    best = ({k: v.detach().clone() for k, v in params.items()}, math.inf)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch):
            opt.zero_grad()
            loss_of(params, idx).backward()
            opt.step()
        with torch.no_grad():
            v = float(val_loss_of(params))
        if v < best[1]:
            best = ({k: t.detach().clone() for k, t in params.items()}, v)
    return best


def fit_mlp(x: Tensor, y: Tensor, val_x: Tensor, val_y: Tensor, hidden: int = 512, epochs: int = 12,
            batch: int = 256, lr: float = 1e-3, seed: int = 0):  # fmt: skip
    """KVzap's MLP ``D -> hidden -> H`` (GELU), MSE on ``y`` (log kvzip scores)."""
    g = torch.Generator().manual_seed(seed)
    d, h = x.shape[1], y.shape[1]
    p = {
        "w1": torch.randn(d, hidden, generator=g) * d**-0.5,
        "b1": torch.zeros(hidden),
        "w2": torch.randn(hidden, h, generator=g) * hidden**-0.5 * 0.1,
        "b2": y.mean(0).clone(),
    }

    def loss(q, idx):
        return F.mse_loss(predict("mlp", q, x[idx][None])[0].T, y[idx])

    def val(q):
        return F.mse_loss(predict("mlp", q, val_x[None])[0].T, val_y)

    with torch.enable_grad():
        best, v = _adamw_fit(p, loss, val, epochs, x.shape[0], batch, lr, seed)
    pred = predict("mlp", best, val_x[None])[0].T
    return best, {"val_mse": v, "val_r": _corr(pred, val_y)}


def fit_gate(x: Tensor, s: Tensor, val_x: Tensor, val_s: Tensor, groups: int, dim: int = 16, n_sinks: int = 16,
             epochs: int = 12, batch: int = 256, lr: float = 3e-3, seed: int = 0):  # fmt: skip
    """Fast KVzip's gates (``kv.learned.gate``), binary cross-entropy on kvzip's scores in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    d, h = x.shape[1], s.shape[1]
    p = {
        "wq": torch.randn(d, h * groups * dim, generator=g) * d**-0.5,
        "wk": torch.randn(d, h * dim, generator=g) * d**-0.5,
        "sinks": torch.randn(h, n_sinks, dim, generator=g),
        "tau": torch.zeros(h),
    }
    target, val_target = s.clamp(0, 1), val_s.clamp(0, 1)

    def bce(q, xs, ts):
        gate = predict("gate", q, xs[None])[0].T.clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(gate, ts)

    with torch.enable_grad():
        best, v = _adamw_fit(p, lambda q, idx: bce(q, x[idx], target[idx]), lambda q: bce(q, val_x, val_target),
                             epochs, x.shape[0], batch, lr, seed)  # fmt: skip
    pred = predict("gate", best, val_x[None])[0].T
    return best, {"val_bce": v, "val_r": _corr(pred, val_s)}


def train(
    model: Any,
    tokenizer: Any,
    methods: tuple[str, ...] = ("kvzap", "fastkvzip"),
    texts: int = 32,
    tokens: int = 1024,
    val: int = 6,
    rows: int = 256,
    epochs: int = 12,
    contexts: list[Any] | None = None,
    sources: tuple[str, ...] = TRAIN_SOURCES,
    seed: int = 0,
    save: bool = True,
) -> dict[str, LearnedScorer]:
    """Train the scorers of ``methods`` for ``model`` (``contexts``: given texts or ids instead of the corpus) and
    save them in the store; returns form -> scorer."""
    unknown = [m for m in methods if m not in FORMS_OF]
    if unknown:
        raise CalibrationError(f"no learned scorer {', '.join(unknown)}; choose from {', '.join(FORMS_OF)}")
    if not 0 < val < (len(contexts) if contexts is not None else texts):
        raise CalibrationError("the validation split must hold at least one text and leave one for training")
    torch.manual_seed(seed)
    from_corpus = contexts is None
    if contexts is None:
        contexts = training_texts(tokenizer, texts, tokens, sources, seed)
    data = collect(model, tokenizer, contexts, val, rows, seed)
    cfg = model.config.get_text_config(decoder=True)
    groups = cfg.num_attention_heads // (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    base = {
        "texts": len(contexts), "val_texts": val, "tokens_per_text": tokens, "train_tokens": data.n_train_tokens,
        "val_tokens": data.n_val_tokens, "rows_per_text": rows, "sources": list(sources) if from_corpus else [],
        "collect_seconds": round(data.seconds, 2), "seed": seed,
        "target": f"kvzip (defaults, {get_method('kvzip').precision_on(model.device)})",
    }  # fmt: skip
    if sources == TRAIN_SOURCES:
        base["corpus"] = "python-docs,debian-reference,licenses"
    out = {}
    for form in [f for m in methods for f in FORMS_OF[m]]:
        start = time.perf_counter()
        tensors: dict[str, Tensor] = {}
        figures: dict[int, dict[str, float]] = {}
        for i in sorted(data.layers):
            x, s = data.rows(i, "train")
            vx, vs = data.rows(i, "val")
            y, vy = torch.log(s.clamp_min(EPS)), torch.log(vs.clamp_min(EPS))
            if form == "ridge":
                d = data.layers[i]
                p, fig = fit_ridge(d.gram, d.xty, vx, vy)
            elif form == "mlp":
                p, fig = fit_mlp(x, y, vx, vy, epochs=epochs, seed=seed + i)
            else:
                p, fig = fit_gate(x, s, vx, vs, groups, epochs=epochs, seed=seed + i)
            tensors.update({f"{i}.{k}": v.detach().contiguous() for k, v in p.items()})
            figures[i] = fig
        seconds = time.perf_counter() - start
        mean_r = sum(f["val_r"] for f in figures.values()) / len(figures)
        meta = {**base, "form": form, "fit_seconds": round(seconds, 2), "val_r_mean": round(mean_r, 4),
                "train_seconds": round(data.seconds + seconds, 2),
                "layers": {str(k): {n: round(v, 5) for n, v in f.items()} for k, f in figures.items()}}  # fmt: skip
        scorer = LearnedScorer(form, model_key(model), tensors, meta)
        if save:
            scorer.save(model)
        out[form] = scorer
    return out
