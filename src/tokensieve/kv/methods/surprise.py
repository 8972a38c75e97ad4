from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.full import token_nll
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import ParameterError
from tokensieve.kv.methods.base import Method, get_method


def quantile(x: Tensor) -> Tensor:
    """Per-head rank of each token in [0, 1] (scale-free, so two scores can be mixed)."""
    return x.argsort(-1).argsort(-1).float() / max(1, x.shape[-1] - 1)


@dataclass
class Surprise(Method):
    """A token's own negative log-likelihood under the model, -log p(x_t | x_<t), from the prefill's final hidden
    states through the LM head in chunks (never a [T, vocab] tensor): facts a later question asks about (codes,
    names, numbers) are what the model could not predict. The same score for every layer and head.

    ``local`` > 0 scores surprise *for its neighbourhood*: the NLL minus its mean over a centred window of that
    many tokens (a surprising prose passage is not a fact; a code inside it is). ``mix`` names another method
    whose score is blended in by per-head rank: ``weight`` x rank(surprise) + (1 - weight) x rank(mix).
    The first token, which nothing predicts, gets the row's largest NLL."""

    id = "surprise"
    paper = "this project (the loss-based token importance of Rho-1 / ssToken, carried over to the KV cache)"
    rule = "-log p(x_t | x_<t) from the prefill's own logits (chunked); optionally local-relative and rank-mixed"

    local: int = 0
    mix: str = ""
    weight: float = 0.5

    def __post_init__(self) -> None:
        if self.mix in (self.id, "span", "mikv"):
            raise ParameterError(f"mix={self.mix!r} must be a score method's id, e.g. kvzip or snapkv")
        if not 0.0 <= self.weight <= 1.0:
            raise ParameterError(f"weight={self.weight} must be in [0, 1]")
        self._other = get_method(self.mix) if self.mix else None

    def needs(self) -> Needs:
        own = Needs(whole_pass=True, final_hidden=True)
        return own if self._other is None else own | self._other.needs()

    def bind(self, model: Any) -> None:
        if self._other is not None:
            self._other.bind(model)

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        if pre.hidden is None:
            raise RuntimeError("surprise needs the prefill's final hidden states: prefill with methods=['surprise']")
        if "nll" not in pre.memo:
            pre.memo["nll"] = token_nll(pre.model, pre.hidden, pre.context_ids, valid=pre.context_mask)
        nll = pre.memo["nll"]
        if self.local > 0:
            k = self.local | 1  # odd, centred
            nll = nll.clone()
            starts = [0] * nll.shape[0] if pre.context_mask is None else pre.context_mask.long().argmax(-1).tolist()
            for row, start in enumerate(starts):  # each row's real tokens only: padding would enter the window
                own = nll[row : row + 1, start:]
                mean = F.avg_pool1d(F.pad(own[:, None], (k // 2, k // 2), mode="replicate"), k, stride=1)[:, 0]
                nll[row, start:] = (own - mean)[0]
        other = {} if self._other is None else (self._other.whole_pass(pre) or {})
        return {layer.layer_idx: (nll, other.get(layer.layer_idx)) for layer in pre.cache.sieve_layers}

    def score(self, x: ScoreInputs) -> Tensor:
        nll, other_pass = x.require_pass_score()
        b, h, t = x.shape
        own = nll[:, None, :].expand(b, h, t).float()
        if x.valid is not None:
            own = own.masked_fill(~x.valid[:, None, :], float("-inf"))
        if self._other is None:
            return own
        sub = ScoreInputs(x.keys, x.values, x.valid, x.obs, x.layer_idx, x.n_layers, other_pass)
        return self.weight * quantile(own) + (1 - self.weight) * quantile(self._other.score(sub).float())
