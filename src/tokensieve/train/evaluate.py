"""Held-out measurement: greedy exact match, answer-token NLL, and how a rule's selection treats injected noise."""

from __future__ import annotations

import re
from typing import Any

import torch

from tokensieve.train.base import Rule
from tokensieve.train.data import Example, collate, encode
from tokensieve.train.loss import token_batch
from tokensieve.train.tokens import IGNORE, shifted, token_logprobs

ANSWER = re.compile(r"Answer:\s*(-?\d+)")


@torch.no_grad()
def exact_match(model: Any, tok: Any, examples: list[Example], batch: int = 50, max_new: int = 48,
                texts: list[str] | None = None) -> list[int]:
    """1/0 per example: the first 'Answer: N' of the greedy continuation equals the gold answer (a
    continuation without 'Answer:' counts as wrong). ``texts``, if given, receives the continuations."""
    model.eval()
    side, tok.padding_side = tok.padding_side, "left"
    out = []
    try:
        for lo in range(0, len(examples), batch):
            chunk = examples[lo : lo + batch]
            enc = tok([e.prompt for e in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
            for e, text in zip(chunk, tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True),
                               strict=True):
                m = ANSWER.search(text)
                if texts is not None:
                    texts.append(text)
                out.append(int(m is not None and m.group(1) == e.answer))
    finally:
        tok.padding_side = side
    return out


@torch.no_grad()
def answer_nll(model: Any, tok: Any, examples: list[Example], batch: int = 50, max_len: int = 128) -> list[float]:
    """Mean NLL per example of the final answer's tokens, teacher-forced after the clean gold solution."""
    model.eval()
    out = []
    for lo in range(0, len(examples), batch):
        items = []
        for e in examples[lo : lo + batch]:
            d = encode(tok, e, max_len)
            n_ans = len(tok(" " + e.answer, add_special_tokens=False)["input_ids"])
            keep = torch.full_like(d["labels"], IGNORE)
            end = len(d["labels"]) - 1  # the eos token is not the answer
            keep[end - n_ans : end] = d["labels"][end - n_ans : end]
            items.append({"input_ids": d["input_ids"], "labels": keep})
        b = collate(items, tok.pad_token_id)
        lp, mask = token_logprobs(model, b["input_ids"], b["labels"], b["attention_mask"])
        out += (-(lp * mask).sum(-1) / mask.sum(-1)).tolist()
    return out


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).float().mean()
    eq = (pos[:, None] == neg[None, :]).float().mean()
    return float(gt + 0.5 * eq)


@torch.no_grad()
def selection(rule: Rule, model: Any, batches: list[dict[str, torch.Tensor]], reference: Any = None,
              pad_id: int = 0) -> dict[str, float]:
    """How ``rule`` weights injected-noise tokens vs clean response tokens: kept fractions and the AUROC of
    (low weight) for noise; 0.5 = no better than random, 1.0 = every noise token weighted below every clean one.
    ``answer_kept``: the share of the final answer line's tokens kept (batches from ``encode`` carry that mask)."""
    noise_w, clean_w, answer_w = [], [], []
    for b in batches:
        tb = token_batch(rule, model, b, reference, pad_id)
        w = rule.weights(tb).float()
        noise_w.append(w[tb.noise & tb.mask])
        clean_w.append(w[~tb.noise & tb.mask])
        if "answer" in b:  # the final 'Answer: N' line's tokens, in the same column layout as the weights
            answer_w.append(w[(shifted(b["answer"].long())[0] == 1) & tb.mask])
    nw, cw = torch.cat(noise_w), torch.cat(clean_w)
    aw = torch.cat(answer_w) if answer_w else torch.zeros(0)
    return {"noise_kept": float((nw > 0).float().mean()), "clean_kept": float((cw > 0).float().mean()),
            "noise_weight": float(nw.mean()), "clean_weight": float(cw.mean()), "auroc": auroc(-nw, -cw),
            "noise_tokens": len(nw), "clean_tokens": len(cw),
            "answer_kept": float((aw > 0).float().mean()) if len(aw) else float("nan"), "answer_tokens": len(aw)}
