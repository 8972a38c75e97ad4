"""The calibrated methods computed once per model by ``tokensieve calibrate --learned <id>`` (besides the learned
scorers of ``kv/learn.py``): ``qfilter``'s filter directions and ``lukv``'s budget curves, each from one prefill of
the offline corpus (never the bench's haystacks), stored in the one calibration store keyed by model."""

from __future__ import annotations

import time
from typing import Any

from tokensieve.errors import CalibrationError
from tokensieve.kv.budget import ALLOCATORS, get_allocator
from tokensieve.kv.methods import get_method
from tokensieve.runtime.store import model_key

OFFLINE_CALIBRATED = ("qfilter", "lukv")


def calibrate_offline(model: Any, tokenizer: Any, name: str) -> dict[str, Any]:
    """Compute and store ``name``'s calibration for ``model``; what it cost (seconds, tokens) and its shape."""
    if name not in OFFLINE_CALIBRATED:
        raise CalibrationError(f"no offline calibration for {name!r}; choose from {', '.join(OFFLINE_CALIBRATED)}")
    owner = get_allocator(name) if name in ALLOCATORS else get_method(name)
    start = time.perf_counter()
    value = owner.calibrate(model, tokenizer)
    return {"method": name, "key": model_key(model), "seconds": round(time.perf_counter() - start, 2),
            "calibration_tokens": owner.calibration_tokens, "shape": list(value.shape)}  # fmt: skip
