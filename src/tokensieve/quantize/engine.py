"""Quantize a causal LM layer by layer, as GPTQ does, on the real Hugging Face model.

One full-precision forward per calibration sequence records each decoder layer's call arguments
(mask, position embeddings of that layer's type) and the first layer's inputs. Then, layer after
layer: the layer runs on its inputs with hooks on its linears accumulating ``H = sum_t w_t x_t x_t^T``,
every linear is quantized, and the *quantized* layer's outputs become the next layer's inputs, so
later layers calibrate on what they will see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokensieve.compat import call_layer, decoder_layers, record_layer_calls
from tokensieve.errors import CalibrationError
from tokensieve.quantize.gptq import Hessian, Quantized, QuantSpec, gptq, rtn

Progress = Callable[[int, int], None]  # (layers done, layers in all)


@dataclass
class QuantResult:
    """What quantization produced: per-linear codes (by module name), and how long it took."""

    spec: QuantSpec
    method: str
    layers: dict[str, Quantized] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    placement: str = ""  # where the rotation went (stream | inputs), empty without one


def layer_linears(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """The linears of each decoder layer, by their full module name (embeddings and the head stay full)."""
    prefix = {id(m): n for n, m in model.named_modules()}
    return [{prefix[id(m)]: m for m in layer.modules() if isinstance(m, nn.Linear)} for layer in decoder_layers(model)]


def check_spec(model: nn.Module, spec: QuantSpec) -> None:
    """Fail before any work when the group size does not fit every linear."""
    for linears in layer_linears(model):
        for lin in linears.values():
            spec.group_of(lin.in_features)


@torch.no_grad()
def quantize_rtn(model: nn.Module, spec: QuantSpec, progress: Progress | None = None) -> QuantResult:
    check_spec(model, spec)
    start = time.perf_counter()
    result = QuantResult(spec, "rtn")
    per_layer = layer_linears(model)
    for i, linears in enumerate(per_layer):
        for name, lin in linears.items():
            result.layers[name] = q = rtn(lin.weight, spec)
            lin.weight.copy_(q.dequantize())
        if progress:
            progress(i + 1, len(per_layer))
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def quantize_gptq(
    model: nn.Module,
    calibration: Sequence[Tensor],
    spec: QuantSpec,
    token_weights: Sequence[Tensor] | None = None,
    progress: Progress | None = None,
    method: str = "gptq",
) -> QuantResult:
    """GPTQ over every decoder linear. ``calibration``: token ids ``[1, T]`` per sequence;
    ``token_weights``: per sequence ``[n_layers, T]`` (mean 1 per layer), or None for plain GPTQ."""
    if not calibration:
        raise CalibrationError("GPTQ needs calibration text: pass at least one sequence of token ids")
    check_spec(model, spec)
    start = time.perf_counter()
    device = next(model.parameters()).device
    with record_layer_calls(model) as calls:
        for ids in calibration:
            model(input_ids=ids.to(device), use_cache=False, logits_to_keep=1)
    xs = [hidden for hidden, _ in calls[0]]
    result = QuantResult(spec, method, tokens=sum(int(ids.numel()) for ids in calibration))
    per_layer = layer_linears(model)
    for i, (layer, linears) in enumerate(zip(decoder_layers(model), per_layer, strict=True)):
        hessians = {name: Hessian(lin.in_features) for name, lin in linears.items()}
        weight: list[Tensor | None] = [None]

        def accumulate(name: str, hessians: dict[str, Hessian] = hessians, weight: list = weight):
            def pre(module: nn.Module, args: tuple) -> None:
                hessians[name].add(args[0], weight[0])

            return pre

        handles = [lin.register_forward_pre_hook(accumulate(name)) for name, lin in linears.items()]
        try:
            for s, x in enumerate(xs):
                weight[0] = None if token_weights is None else token_weights[s][i]
                call_layer(layer, x, calls[i][s][1])
        finally:
            for h in handles:
                h.remove()
        for names in _shared_inputs(hessians):
            # linears fed the same input (q/k/v, gate/up) share H: GPTQ is row-wise, so one stacked run
            # equals separate runs and saves the column loop
            stacked = torch.cat([linears[n].weight for n in names])
            q = gptq(stacked, hessians[names[0]].h, spec)
            start_row = 0
            for n in names:
                rows = linears[n].out_features
                part = q.rows(start_row, start_row + rows)
                result.layers[n] = part
                linears[n].weight.copy_(part.dequantize().to(linears[n].weight.dtype))
                start_row += rows
        xs = [call_layer(layer, x, calls[i][s][1]) for s, x in enumerate(xs)]
        if progress:
            progress(i + 1, len(per_layer))
    result.seconds = time.perf_counter() - start
    return result


def _shared_inputs(hessians: dict[str, Hessian]) -> list[list[str]]:
    """Linears grouped by identical Hessians (the same inputs), in module order."""
    groups: list[list[str]] = []
    for name, h in hessians.items():
        if h.tokens == 0:
            raise CalibrationError(f"{name} saw no calibration tokens: the layer's hooks did not engage")
        for g in groups:
            if torch.equal(hessians[g[0]].h, h.h):
                g.append(name)
                break
        else:
            groups.append([name])
    return groups
