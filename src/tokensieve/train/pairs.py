"""The cDPO pipeline: two contrast models, then a token-weighted DPO on (correct, incorrect) pairs.

The contrast models are copies of the policy briefly fine-tuned (plain SFT) on correct and on incorrect
trajectories; their log-probability margin on each rejected token says how 'critical' it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from tokensieve.train.base import TokenBatch
from tokensieve.train.loop import StepLog, frozen_copy, make_optimizer, train
from tokensieve.train.methods import SFT, Critical
from tokensieve.train.methods.critical import critical_margin, critical_weights
from tokensieve.train.tokens import token_logprobs


def contrast_models(model: Any, correct: Iterable[dict], incorrect: Iterable[dict], steps: int, lr: float,
                    pad_id: int = 0, bf16: bool = False) -> tuple[Any, Any]:
    """(pos, neg): frozen copies of ``model`` after ``steps`` SFT steps on correct / incorrect batches."""
    out = []
    for batches in (correct, incorrect):
        m = frozen_copy(model)
        for p, q in zip(m.parameters(), model.parameters(), strict=True):
            p.requires_grad_(q.requires_grad)
        for _ in train(SFT(), m, batches, steps, lr=lr, pad_id=pad_id, bf16=bf16):
            pass
        out.append(frozen_copy(m))
    return out[0], out[1]


def _side(model: Any, reference: Any, b: dict) -> TokenBatch:
    logp, mask = token_logprobs(model, b["input_ids"], b["labels"], b.get("attention_mask"))
    with torch.no_grad():
        ref = token_logprobs(reference, b["input_ids"], b["labels"], b.get("attention_mask"))[0]
    return TokenBatch(logp, mask, ref_logp=ref)


def pair_loss(rule: Critical, model: Any, reference: Any, pos: Any, neg: Any, chosen: dict, rejected: dict):
    """(loss, critical weights of the rejected tokens) for one batch of preference pairs."""
    c, r = _side(model, reference, chosen), _side(model, reference, rejected)
    with torch.no_grad():
        args = (rejected["input_ids"], rejected["labels"], rejected.get("attention_mask"))
        p_pos, p_neg = token_logprobs(pos, *args)[0], token_logprobs(neg, *args)[0]
    loss = rule.pair_loss(c, r, p_pos, p_neg)
    return loss, critical_weights(critical_margin(p_pos, p_neg), r.mask, rule.tau)


def train_pairs(rule: Critical, model: Any, pairs: Iterable[tuple[dict, dict]], steps: int, lr: float,
                reference: Any, pos: Any, neg: Any, bf16: bool = False, optimizer: Any = None,
                start: int = 0) -> Iterator[StepLog]:
    """Token-weighted DPO for ``steps`` pair batches; ``noise_kept`` logs the mean weight on known critical
    tokens (the rejected side's ``noise`` mask) and ``kept`` the mean weight over all rejected tokens."""
    opt = optimizer or make_optimizer(model, lr)
    model.train()
    it = iter(pairs)
    for step in range(start, steps):
        chosen, rejected = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, w = pair_loss(rule, model, reference, pos, neg, chosen, rejected)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mask = rejected["labels"][:, 1:] != -100
        w = w[:, :-1]
        crit = rejected["noise"][:, 1:].bool() & mask if "noise" in rejected else None
        trained = int(mask.sum() + (chosen["labels"] != -100).sum())  # both sides carry gradient
        yield StepLog(step + 1, float(loss.detach()), float(w[mask].mean()), trained,
                      float(w[crit].mean()) if crit is not None and crit.any() else None)
    model.eval()
