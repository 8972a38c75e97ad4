from __future__ import annotations

from dataclasses import dataclass

from tokensieve.errors import check_choice
from tokensieve.kv.methods.learned import LearnedScore


@dataclass
class KVzap(LearnedScore):
    """A per-layer regressor from each token's attention input to the log of kvzip's score, trained here on the
    project's offline corpora (``tokensieve calibrate --learned kvzap``): kvzip's ranking without its
    reconstruction pass. ``regressor="ridge"`` (linear, closed form) or ``"mlp"`` (D -> 512 -> Hkv, GELU)."""

    id = "kvzap"
    paper = "KVzap: fast, adaptive KV cache pruning (2026)"
    rule = "regressor(x_t) -> log kvzip score, per layer and KV head"

    regressor: str = "ridge"
    sinks: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("regressor", self.regressor, ("ridge", "mlp"))

    def scorer_form(self) -> str:
        return self.regressor
