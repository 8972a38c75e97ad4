"""The one service "score a prefill with a method": the method's pass over the whole prefill (kvzip's
reconstruction, surprise's NLL; run here, once, memoized on the prefill), each layer's observation and the layer
count (``observed.layer_inputs``). ``Prefill.compress``, quantization's token weights and the KV scores read as
explanations all score through it, so a method scores the same tokens the same way for each of them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.cache import SieveLayer
from tokensieve.kv.methods import Method
from tokensieve.kv.observed import layer_inputs


def prefill_inputs(pre: Any, method: Method) -> list[tuple[SieveLayer, ScoreInputs]]:
    """Each full-attention layer of ``pre`` (a ``Prefill``) with what ``method`` scores it from. Raises if the
    prefill did not observe what the method needs."""
    missing = missing_needs(method.needs(), pre.needs)
    if missing:
        raise ValueError(f"the prefill did not observe {missing} for {method.id}: pass it in methods=")
    passes = method.whole_pass(pre) or {}  # after the prefill, on forks of its cache
    return layer_inputs(pre.cache, pre.observations, passes)


def score_prefill(pre: Any, method: Method) -> dict[int, Tensor]:
    """``method``'s score ``[B, Hkv, T]`` (larger = keep) for every observed full-attention layer of ``pre``, in
    layer order. The method is bound to the prefill's model first, as when it compresses: a method that reads the
    model (rotary frequencies, a calibration) would otherwise score without it."""
    method.bind(pre.model)
    return {layer.layer_idx: method.score(x) for layer, x in prefill_inputs(pre, method) if x.obs is not None}


def finite(s: Tensor) -> Tensor:
    """Each row's ``+inf`` (a KV score's always-kept tokens) as its largest finite value, ``-inf`` as its
    smallest, so summing heads and min-max scaling give weights, not NaN (a row with none finite: 0)."""
    ok = torch.isfinite(s)
    top = torch.where(ok, s, float("-inf")).amax(-1, keepdim=True)
    bottom = torch.where(ok, s, float("inf")).amin(-1, keepdim=True)
    s = torch.where(s == float("inf"), top, torch.where(s == float("-inf"), bottom, s))
    return torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)


def missing_needs(need: Needs, have: Needs) -> str:
    """What ``need`` asks that a prefill observing ``have`` did not record ("" when nothing)."""
    parts = []
    if need.final_hidden and not have.final_hidden:
        parts.append("the final hidden states")
    if need.layer_input and not have.layer_input:
        parts.append("each layer's attention input")
    if need.window > have.window:
        parts.append(f"a window of {need.window} queries")
    if need.probes > have.probes:
        parts.append(f"{need.probes:.0%} probe queries")
    if not need.stats <= have.stats:
        parts.append(", ".join(s.key for s in need.stats - have.stats))
    return "; ".join(parts)
