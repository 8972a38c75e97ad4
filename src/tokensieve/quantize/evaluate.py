"""Quality of a quantized model against its full-precision original.

Perplexity on 512-token windows of held-out text, KL(full || quantized) and top-1 agreement per token,
and pass-key retrieval at 1-2k tokens. Logits are computed from the final hidden states a slice of
``SLICE`` positions at a time, so no ``[T, vocab]`` tensor exists (Gemma-3's vocabulary is 262k).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from tokensieve.compat import logits_from_hidden
from tokensieve.kv import prefill
from tokensieve.runtime.passkey import passkey_context
from tokensieve.stats import t_interval

SLICE = 64


@dataclass
class Quality:
    ppl: float
    ppl_full: float
    kl: float
    kl_ci: float  # 95% Student-t half-width over windows (nan for one window)
    top1: float
    tokens: int
    passkey: float | None = None
    passkey_full: float | None = None
    passkey_n: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _hidden(model: nn.Module, ids: Tensor) -> Tensor:
    return model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state


@torch.no_grad()
def compare(quant: nn.Module, full: nn.Module, windows: list[Tensor]) -> Quality:
    nll_q = nll_f = 0.0
    agree = n = 0
    kls: list[float] = []
    for ids in windows:
        hq, hf = _hidden(quant, ids), _hidden(full, ids)
        target = ids[0, 1:]
        kl_w = 0.0
        for s in range(0, ids.shape[1] - 1, SLICE):
            e = min(s + SLICE, ids.shape[1] - 1)
            lq = torch.log_softmax(logits_from_hidden(quant, hq[0, s:e]).float(), -1)
            lf = torch.log_softmax(logits_from_hidden(full, hf[0, s:e]).float(), -1)
            t = target[s:e]
            nll_q -= float(lq.gather(1, t[:, None]).sum())
            nll_f -= float(lf.gather(1, t[:, None]).sum())
            kl_w += float((lf.exp() * (lf - lq)).sum())
            agree += int((lq.argmax(-1) == lf.argmax(-1)).sum())
        n += ids.shape[1] - 1
        kls.append(kl_w / (ids.shape[1] - 1))
    # Student-t over the windows (a normal 1.96 understated 4 windows' interval by 1.6x); one window has no
    # spread to measure: nan, not a zero-width interval
    kl = t_interval(kls)
    return Quality(math.exp(nll_q / n), math.exp(nll_f / n), kl.estimate, kl.half, agree / n, n)


def passkey(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int = 1500,
    depths=(0.1, 0.5, 0.9),
    keys=("68213", "40917"),
) -> float:
    """Fraction of pass keys retrieved (greedy, full cache) over ``depths`` x ``keys``."""
    hits = total = 0
    for depth in depths:
        for key in keys:
            task = passkey_context(tokenizer, tokens, depth, key=key)
            answer = (
                prefill(model, tokenizer, task.context)
                .uncompressed()
                .answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=8)
            )
            hits += task.correct(answer)
            total += 1
    return hits / total
