"""One call from a loaded model to a quantized one: rotate, weigh tokens, quantize."""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from tokensieve.quantize.data import calibration_windows
from tokensieve.quantize.engine import Progress, QuantResult, check_spec, quantize_gptq, quantize_rtn
from tokensieve.quantize.export.grids import grid_of
from tokensieve.quantize.gptq import QuantSpec
from tokensieve.quantize.methods import get_quant_method
from tokensieve.quantize.rotate import placement_of
from tokensieve.quantize.rotate import rotate as rotate_model
from tokensieve.quantize.weights import weight_source


@dataclass
class Recipe:
    method: str = "gptq"
    bits: int = 4
    group: int = 0
    clip: bool = False
    weights: str | None = None  # None: the method's default
    rotate: bool | None = None  # None: the method's default
    rotation: str = "auto"
    placement: str = "auto"  # where the rotation goes: auto | stream | inputs (see quantize.rotate)
    n_calib: int = 8
    calib_len: int = 512
    seed: int = 0
    calib_source: str = "docs"  # docs | essays | both (quantize.data.calibration_windows)
    grid: str = ""  # a GGUF block type (Q4_0, ..., Q3_K) to round on instead of min-max; bits/group then follow it

    def resolved(self) -> Recipe:
        m = get_quant_method(self.method)
        weights = m.weights if self.weights is None else self.weights
        rotate = m.rotate if self.rotate is None else self.rotate
        return Recipe(**{**self.__dict__, "weights": weights if m.calibrated else "", "rotate": rotate})


def quantize(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    progress: Progress | None = None,
    rotation: Tensor | None = None,
) -> tuple[QuantResult, Tensor | None]:
    """Quantize ``model`` in place; returns the result and the rotation used (None without one).
    ``rotation`` reuses a given matrix (the benchmark shares one across calibration seeds)."""
    r = recipe.resolved()
    grid = grid_of(r.grid) if r.grid else None
    spec = QuantSpec(bits=grid.bits if grid else r.bits, group=r.group, clip=r.clip, grid=grid)
    check_spec(model, spec)
    start = time.perf_counter()
    placement = placement_of(model, r.placement) if r.rotate else ""
    q = rotate_model(model, q=rotation, kind=r.rotation, seed=r.seed, placement=placement) if r.rotate else None
    if not get_quant_method(r.method).calibrated:
        result = quantize_rtn(model, spec, progress)
    else:
        calib = calibration_windows(tokenizer, r.n_calib, r.calib_len, r.seed, r.calib_source)
        source = weight_source(r.weights or "uniform")
        weights = None if r.weights == "uniform" else [source(model, ids) for ids in calib]
        result = quantize_gptq(model, calib, spec, weights, progress, method=r.method)
    result.seconds = time.perf_counter() - start
    result.placement = placement
    return result, q
