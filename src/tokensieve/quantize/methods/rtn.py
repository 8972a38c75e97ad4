from __future__ import annotations

from dataclasses import dataclass

from tokensieve.quantize.methods.base import QuantMethod


@dataclass
class RTN(QuantMethod):
    id = "rtn"
    paper = "round to nearest (baseline)"
    rule = "min-max grid per group, no calibration"

    calibrated: bool = False
    weights: str = "none"
