from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv.methods.base import Method


@dataclass
class FINCH(Method):
    """Attention from the prompt's last ``window`` queries (FINCH's question; here, with the question unseen, the
    context's tail), each query's row multiplied by the number of keys it can see so that a deep query's attention
    (spread over more keys) counts as much as a shallow one's; mean over the rows and the GQA group. The window
    itself is kept. FINCH's chunked reading and re-rotation are the ``chunk`` and ``rerotate`` wrappers."""

    id = "finch"
    paper = "FINCH: Prompt-guided Key-Value Cache Compression for Large Language Models (Corallo & Papotti, TACL 2024)"
    rule = "mean over the last w queries p of A[p, i] x (#keys p sees), GQA-mean; the window kept"

    window: float = 32

    def needs(self) -> Needs:
        return Needs(window=int(self.window))

    def score(self, x: ScoreInputs) -> Tensor:
        probs = x.window_probs(int(self.window))  # [B, Hkv, G, w, T]
        seen = (probs > 0).sum(-1, keepdim=True).float()  # keys each row can see (real, causal)
        return (probs * seen).mean((2, 3))
