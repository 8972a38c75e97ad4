"""The quantization methods by id: one small file each (a recipe over the same parts), one entry here."""

from __future__ import annotations

from typing import Any

from tokensieve.quantize.methods.base import QuantMethod
from tokensieve.quantize.methods.gptq import GPTQ
from tokensieve.quantize.methods.rsq import RSQ
from tokensieve.quantize.methods.rtn import RTN
from tokensieve.registry import instantiate, register_family

REGISTRY: dict[str, type[QuantMethod]] = {cls.id: cls for cls in (RTN, GPTQ, RSQ)}
register_family(
    "weight quantization", REGISTRY, "a weight-quantization method: use tokensieve quantize --method {id}", __name__
)


def get_quant_method(method: str | QuantMethod, **params: Any) -> QuantMethod:
    """A quantization method by id (``tokensieve quantize --method``), or the instance itself."""
    return instantiate(REGISTRY, QuantMethod, "quantization method", method, params)


__all__ = ["GPTQ", "REGISTRY", "RSQ", "RTN", "QuantMethod", "get_quant_method"]
