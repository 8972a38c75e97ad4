from __future__ import annotations

from dataclasses import dataclass

from tokensieve.quantize.methods.base import QuantMethod


@dataclass
class GPTQ(QuantMethod):
    id = "gptq"
    paper = "GPTQ (Frantar et al., 2023)"
    rule = "column-wise quantization with error feedback through the inverse Hessian sum_t x_t x_t^T"
