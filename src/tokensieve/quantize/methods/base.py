"""What a quantization method is: a recipe over the same parts (round to nearest or GPTQ on calibration text,
an optional residual rotation, a default token-weight source)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokensieve.registry import Registered


@dataclass
class QuantMethod(Registered):
    kind: ClassVar[str] = "weight quantization"  # `tokensieve methods` lists it; `tokensieve quantize` runs it

    calibrated: bool = True  # runs GPTQ on calibration text (else round to nearest)
    rotate: bool = False  # rotates the residual stream first, unless the caller says otherwise
    weights: str = "uniform"  # default token-weight source: uniform = plain GPTQ; none = no calibration
