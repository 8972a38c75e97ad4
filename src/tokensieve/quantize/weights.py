"""Token weights for the GPTQ Hessian: RSQ's attention concentration, or any tokensieve KV score.

A weight source maps one calibration sequence ``[1, T]`` to ``[n_layers, T]``: one weight per token
per decoder layer, scaled into ``[1, 3]`` (RSQ's range) and then to mean 1, so a source never changes
the Hessian's overall scale, only which tokens it listens to. Scores come from tokensieve's prefill
observation (column stats accumulated in query chunks; no T x T matrix is kept). Layers the prefill
does not observe (Gemma-3's sliding-window layers) take the mean weights of the observed layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.stats import AttnSum
from tokensieve.core.scores.attention import visible_counts
from tokensieve.errors import CalibrationError, ParameterError, UnknownMethodError
from tokensieve.kv import finite, get_method, method_ids, prefill, score_prefill

WeightSource = Callable[[nn.Module, Tensor], Tensor]
RANGE = (1.0, 3.0)


def scale_range(s: Tensor, lo: float = RANGE[0], hi: float = RANGE[1]) -> Tensor:
    """Min-max scale each row of ``s [..., T]`` into ``[lo, hi]`` (a constant row becomes ``lo``)."""
    s = s.float()
    smin, smax = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
    return lo + (hi - lo) * (s - smin) / (smax - smin).clamp(min=1e-12)


def mean_one(w: Tensor) -> Tensor:
    return w / w.mean(-1, keepdim=True)


def _per_layer(model: nn.Module, ids: Tensor, method: str | None) -> Tensor:
    """Scores ``[n_layers, T]`` summed over KV heads from one prefill of ``ids`` (``method`` None: attncon)."""
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    m = None if method is None else get_method(method)
    if m is not None:
        m.bind(model)
    needs = Needs(stats=frozenset({AttnSum()})) if m is None else m.needs()
    p = prefill(model, None, ids.reshape(1, -1), needs=needs)
    rows: dict[int, Tensor] = {}
    if m is None:  # attention received, summed over queries and heads, per query that can see the token
        for layer in p.cache.sieve_layers:
            obs = p.observations.get(layer.layer_idx)
            if obs is not None:
                t = layer.keys.shape[2]
                seen = visible_counts(torch.arange(t), t, None, 1)
                rows[layer.layer_idx] = (obs.stats[AttnSum().key].sum(1) / seen)[0]
    else:  # the KV service: the method's whole-prefill pass (surprise, kvzip) included
        rows = {i: finite(s.float()).sum(1)[0] for i, s in score_prefill(p, m).items()}
    if not rows:
        raise CalibrationError("the prefill observed no layer: the model has no full-attention layer to score tokens")
    mean = torch.stack(list(rows.values())).mean(0)
    return torch.stack([rows.get(i, mean) for i in range(n_layers)])


def attncon(model: nn.Module, ids: Tensor) -> Tensor:
    """RSQ's attention concentration, per layer, in ``[1, 3]`` then mean 1."""
    return mean_one(scale_range(_per_layer(model, ids, None)))


def from_score(method: str) -> WeightSource:
    """Any tokensieve KV-eviction score (``snapkv``, ``h2o``, ...) as token weights, mapped like attncon."""
    m = get_method(method)  # fail early on an unknown id
    if m.changes_prefill:
        raise ParameterError(f"{method} changes the prefill's attention, so it scores no tokens: use a KV score")
    return lambda model, ids: mean_one(scale_range(_per_layer(model, ids, method)))


def uniform(model: nn.Module, ids: Tensor) -> Tensor:
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return torch.ones(n_layers, ids.numel())


def weight_source(name: str) -> WeightSource:
    if name == "attncon":
        return attncon
    if name == "uniform":
        return uniform
    if name in method_ids():
        return from_score(name)
    raise UnknownMethodError(
        f"unknown token-weight source {name!r}: use attncon, uniform or a KV score id ({', '.join(method_ids())})"
    )
