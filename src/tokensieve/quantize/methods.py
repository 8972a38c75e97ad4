"""The quantization methods, as recipes over the same parts (one registry, like the KV methods')."""

from __future__ import annotations

from dataclasses import dataclass

from tokensieve.errors import UnknownMethodError


@dataclass(frozen=True)
class QuantMethod:
    id: str
    paper: str
    rule: str
    calibrated: bool  # runs GPTQ on calibration text (else round to nearest)
    rotate: bool  # rotates the residual stream first, unless the caller says otherwise
    weights: str  # default token-weight source: uniform = plain GPTQ

    def describe(self) -> dict[str, object]:
        defaults = {"calibrated": self.calibrated, "rotate": self.rotate, "weights": self.weights or "none"}
        kind = "weight quantization"
        return {"id": self.id, "kind": kind, "paper": self.paper, "rule": self.rule, "defaults": defaults}


REGISTRY = {
    m.id: m
    for m in (
        QuantMethod("rtn", "round to nearest (baseline)", "min-max grid per group, no calibration", False, False, ""),
        QuantMethod(
            "gptq",
            "GPTQ (Frantar et al., 2023)",
            "column-wise quantization with error feedback through the inverse Hessian sum_t x_t x_t^T",
            True,
            False,
            "uniform",
        ),
        QuantMethod(
            "rsq",
            "RSQ: Learning from Important Tokens Leads to Better Quantized LLMs (Sung et al., 2025)",
            "rotate the residual stream, then GPTQ with H = sum_t w_t x_t x_t^T, w = attention concentration in [1, 3]",
            True,
            True,
            "attncon",
        ),
    )
}


def get_quant_method(name: str) -> QuantMethod:
    if name not in REGISTRY:
        raise UnknownMethodError(f"unknown quantization method {name!r}: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]
