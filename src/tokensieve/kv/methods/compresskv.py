from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.attention import pool_keys
from tokensieve.core.scores.retrieval import srh_scores
from tokensieve.kv.methods.base import Calibrated


@dataclass
class CompressKV(Calibrated):
    """Semantic retrieval heads: ``tokensieve calibrate`` (run once per model, automatically on first use)
    measures, on synthetic needle prompts, how much attention each query head's question and answer rows pay
    to the needle and its surroundings. Here each layer's ``heads`` strongest such heads score the tokens
    (SnapKV-style: attention of the last ``window`` prompt queries, summed, pooled with ``kernel``), and their
    score is applied to their whole GQA group (a group without one uses the layer's). The observation window
    is kept. Pair it with the ``compresskv`` allocator for the paper's error-proportional layer budgets."""

    id = "compresskv"
    paper = "CompressKV: Semantic Retrieval Heads Know What Tokens are Not Important Before Generation (2025)"
    rule = "window attention from the layer's top calibrated retrieval heads only, per GQA group; window kept"
    kind: ClassVar[str] = "prefill eviction (calibrated)"

    window: float = 32
    kernel: int = 7
    heads: int = 2

    def needs(self) -> Needs:
        return Needs(window=int(self.window))

    def score(self, x: ScoreInputs) -> Tensor:
        cal = self.calibration
        retrieval = cal.retrieval[cal.row(x.layer_idx)]
        probs = x.window_probs(int(self.window))
        return pool_keys(srh_scores(probs, retrieval, self.heads), self.kernel)
