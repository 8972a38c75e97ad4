"""CompressKV's layer budgets: proportional to each layer's measured eviction error (from calibration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokensieve.errors import CalibrationError
from tokensieve.kv.budget.base import Allocator, _round_capped


@dataclass
class ErrorProportional(Allocator):
    """Layer ``l`` gets ``budget x (floor + (1 - floor) x L x e_l / sum(e))``: a share ``floor`` of the mean
    budget everywhere, the rest in proportion to ``e_l``, the relative error of layer ``l``'s attention output
    when it is evicted to the calibration keep ratio (measured by ``tokensieve calibrate`` on synthetic
    retrieval prompts and cached per model). Layers whose output suffers most from eviction keep most."""

    id = "compresskv"
    paper = "CompressKV: Semantic Retrieval Heads Know What Tokens are Not Important Before Generation (2025)"
    rule = "layer budget = budget x (floor + (1 - floor) x L x e_l / sum e), e_l = calibrated eviction error"

    floor: float = 0.2

    def __post_init__(self) -> None:
        self.errors: list[float] | None = None

    def bind(self, model: Any) -> None:
        from tokensieve.kv.calibration import get_calibration

        self.errors = [float(e) for e in get_calibration(model).layer_error]

    def layer_budgets(self, budget: int, n_layers: int, n_tokens: int) -> list[int]:
        if self.errors is None:
            raise CalibrationError(
                "the compresskv allocator needs the model's calibration: compress through tokensieve.compress / "
                "prefill / SieveCache(model, ...), which bind it (or call allocator.bind(model))"
            )
        if len(self.errors) != n_layers:
            raise CalibrationError(
                f"the calibration has {len(self.errors)} compressible layers, the cache {n_layers}: "
                "recalibrate with `tokensieve calibrate --force`"
            )
        total = sum(self.errors) or 1.0
        raw = [budget * (self.floor + (1 - self.floor) * n_layers * e / total) for e in self.errors]
        return _round_capped(raw, budget * n_layers, n_tokens)
