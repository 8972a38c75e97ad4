from __future__ import annotations

from dataclasses import dataclass

from tokensieve.quantize.methods.base import QuantMethod


@dataclass
class RSQ(QuantMethod):
    id = "rsq"
    paper = "RSQ: Learning from Important Tokens Leads to Better Quantized LLMs (Sung et al., 2025)"
    rule = "rotate the residual stream, then GPTQ with H = sum_t w_t x_t x_t^T, w = attention concentration in [1, 3]"

    rotate: bool = True
    weights: str = "attncon"
