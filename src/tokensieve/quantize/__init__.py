"""Weight quantization with token importance (RSQ): rotate, scale the Hessian by token weights, quantize.

``rtn`` and ``gptq`` are the baselines; ``rsq`` is GPTQ after a residual-stream rotation with
attention-concentration token weights. See ``docs/quantize.md``.
"""

from __future__ import annotations

from .engine import QuantResult, quantize_gptq, quantize_rtn
from .gptq import Quantized, QuantSpec, gptq, rtn
from .rotate import RotationError, rotate
from .weights import attncon, weight_source

__all__ = [
    "QuantResult",
    "QuantSpec",
    "Quantized",
    "RotationError",
    "attncon",
    "gptq",
    "quantize_gptq",
    "quantize_rtn",
    "rotate",
    "rtn",
    "weight_source",
]
