"""The transformers release in use and the tested range; the error a mechanism that did not engage raises."""

from __future__ import annotations

from typing import Any

import transformers

from tokensieve.errors import EngagementError

TRANSFORMERS_VERSION: str = transformers.__version__
# the floor and the newest release the test suite runs on (CI runs both; pyproject and README say the same)
TESTED_TRANSFORMERS: tuple[str, str] = ("5.4.0", "5.25.0")

# `PreTrainedConfig` is the name from 5.x; `PretrainedConfig` is the legacy alias (kept for older releases).
PreTrainedConfig = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig


# --- engagement ----------------------------------------------------------------------------------------------------
def not_engaged(what: str, model: Any, detail: str) -> EngagementError:
    """The error for a mechanism that was attached but did nothing: it names the mechanism, the model class and
    the transformers version, so a release that renamed something shows up as an error, not as a silent no-op."""
    name = type(model).__name__ if model is not None else "the model"
    return EngagementError(
        f"{what} did not engage on {name} with transformers {TRANSFORMERS_VERSION}: {detail}; tokensieve is tested "
        f"on transformers {TESTED_TRANSFORMERS[0]}..{TESTED_TRANSFORMERS[1]} (pin one of those or report the model)"
    )
