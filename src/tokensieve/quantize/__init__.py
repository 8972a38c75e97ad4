"""Weight quantization with token importance (RSQ): rotate, scale the Hessian by token weights, quantize.

``rtn`` and ``gptq`` are the baselines; ``rsq`` is GPTQ after a residual-stream rotation with
attention-concentration token weights. See ``docs/quantize.md``.
"""

from __future__ import annotations

from tokensieve.quantize.engine import QuantResult, quantize_gptq, quantize_rtn
from tokensieve.quantize.gptq import Quantized, QuantSpec, gptq, rtn
from tokensieve.quantize.rotate import RotationError, rotate
from tokensieve.quantize.weights import attncon, weight_source

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
