"""The one observed forward below the compression pipeline: a prefill that keeps the full cache and what each
layer's attention showed, checking that every observer engaged. The pipeline, calibration and the sink map all
start from it, so none of them needs the compression pipeline above."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from tokensieve import compat
from tokensieve.core.observe.capture import LayerObservation, Needs, observe
from tokensieve.core.observe.hooks import capturing_layer_inputs, engaged, prepare, take_layer_input
from tokensieve.core.observe.inputs import PassScore, ScoreInputs
from tokensieve.kv.cache import CompressibleCache, SieveLayer


@dataclass
class Observed:
    cache: CompressibleCache
    observations: dict[int, LayerObservation]
    logits: Tensor  # the last position's logits [B, vocab]
    hidden: Tensor | None  # the final hidden states [B, T, D] when ``needs.final_hidden``
    seconds: float


def forward(
    model: PreTrainedModel, ids: Tensor, mask: Tensor | None, cache: CompressibleCache, what: str, inputs: bool = False
) -> Tensor:
    """The prefill into ``cache`` (its last position's logits); ``inputs``: capture each layer's attention input
    for its observer (``Needs.layer_input``)."""
    with (
        torch.inference_mode(),
        engaged(cache, model, what, observed=True),  # every observer / compression ran
        capturing_layer_inputs(model, inputs),
    ):
        out = model(
            input_ids=ids.to(model.device),
            attention_mask=None if mask is None else mask.to(model.device),
            **compat.with_cache(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1]


def forward_hidden(
    model: PreTrainedModel, ids: Tensor, mask: Tensor | None, cache: CompressibleCache, what: str, inputs: bool = False
):
    """The prefill that also keeps the final hidden states (public ``output_hidden_states``; the last entry is
    the normed output the LM head reads), for scores computed from the model's own predictions."""
    with torch.inference_mode(), engaged(cache, model, what, observed=True), capturing_layer_inputs(model, inputs):
        out = model(
            **compat.with_cache(
                model,
                cache,
                input_ids=ids.to(model.device),
                attention_mask=None if mask is None else mask.to(model.device),
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=True,
            )
        )
    return out.logits[:, -1], out.hidden_states[-1]


def observe_prefill(
    model: PreTrainedModel,
    ids: Tensor,
    mask: Tensor | None = None,
    needs: Needs | None = None,
    what: str = "the observing prefill",
) -> Observed:
    """Run ``ids`` once into a full ``CompressibleCache``, recording what ``needs`` asks of every full-attention
    layer."""
    prepare(model)
    needs = needs or Needs()
    cache = CompressibleCache(model.config)
    observations: dict[int, LayerObservation] = {}

    def record(layer: SieveLayer, query: Tensor, scaling: float) -> None:
        layer.on_attention = None
        x = take_layer_input(layer.layer_idx)
        observations[layer.layer_idx] = observe(needs, query, layer.keys, layer.valid, scaling, layer_input=x)

    for layer in cache.sieve_layers:
        layer.on_attention = record
    start = time.perf_counter()
    hidden = None
    if needs.final_hidden:
        logits, hidden = forward_hidden(model, ids, mask, cache, what, needs.layer_input)
    else:
        logits = forward(model, ids, mask, cache, what, needs.layer_input)
    return Observed(cache, observations, logits, hidden, time.perf_counter() - start)


def layer_inputs(
    cache: CompressibleCache,
    observations: Mapping[int, LayerObservation],
    pass_scores: Mapping[int, PassScore] | None = None,
) -> list[tuple[SieveLayer, ScoreInputs]]:
    """What a score reads for each full-attention layer of a prefilled cache: its keys, values and padding, its
    observation (None when not observed), its result of a whole-prefill pass, and the layer count, which is
    counted here once for everyone: the cache's full-attention layers (the ones a method scores)."""
    layers = cache.sieve_layers
    passes = pass_scores or {}
    out = []
    for layer in layers:
        i = layer.layer_idx
        x = ScoreInputs(layer.keys, layer.values, layer.valid, observations.get(i), i, len(layers), passes.get(i))
        out.append((layer, x))
    return out
