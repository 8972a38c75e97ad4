"""Runs the forwards a rule needs and returns its loss: the one function the Trainer and the loop share.

A batch is what a standard collator makes: ``input_ids``, ``attention_mask`` and ``labels`` with -100 on
the prompt and on padding (right padding). An optional ``noise`` mask (injected-noise ground truth) is
passed through to the ``TokenBatch`` for measuring selection and never reaches the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokensieve.train.attention import prompt_attention
from tokensieve.train.base import Rule, TokenBatch, TrainRuleError
from tokensieve.train.tokens import IGNORE, logprobs_from_hidden, shifted, token_logprobs


def prompt_lengths(labels: Tensor) -> Tensor:
    """Index of each row's first trained token (= its prompt length)."""
    trained = labels != IGNORE
    if not trained.any(-1).all():
        raise TrainRuleError("a row of the batch has no trained token (labels are all -100): drop empty examples")
    return trained.float().argmax(-1)


def prompt_free(input_ids: Tensor, labels: Tensor, pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The response alone, after the one token that precedes it (the 'answer starts' separator):
    (ids, attention mask, labels, index of each kept token in the original row)."""
    start = prompt_lengths(labels)
    keep = [torch.cat([s.view(1) - 1, (labels[b] != IGNORE).nonzero().flatten()]) for b, s in enumerate(start)]
    width = max(len(k) for k in keep)
    ids = torch.full((len(keep), width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    lab = torch.full_like(ids, IGNORE)
    att = torch.zeros_like(ids)
    where = torch.full_like(ids, -1)
    for b, k in enumerate(keep):
        ids[b, : len(k)] = input_ids[b, k]
        lab[b, 1 : len(k)] = input_ids[b, k[1:]]
        att[b, : len(k)] = 1
        where[b, : len(k)] = k
    return ids, att, lab, where


@torch.no_grad()
def free_logprobs(model: Any, input_ids: Tensor, labels: Tensor, pad_id: int) -> Tensor:
    """log p of each response token without the prompt, in the original ``[B, T]`` column layout."""
    ids, att, lab, where = prompt_free(input_ids, labels, pad_id)
    lp, mask = token_logprobs(model, ids, lab, att)
    out = torch.zeros(input_ids.shape, dtype=lp.dtype, device=lp.device)
    rows, cols = mask.nonzero(as_tuple=True)
    out[rows, where[rows, cols + 1] - 1] = lp[rows, cols]  # column t scores token t + 1
    return out


@torch.no_grad()
def perturbed_logprobs(model: Any, batch: dict[str, Tensor], k: int, sigma: float, seed: int = 0) -> Tensor:
    """``[K, B, T]`` log p under input embeddings plus Gaussian noise of ``sigma`` x each embedding's RMS."""
    emb = model.get_input_embeddings()(batch["input_ids"])
    rms = emb.pow(2).mean(-1, keepdim=True).sqrt()
    gen = torch.Generator(device=emb.device).manual_seed(seed)
    out = []
    for _ in range(k):
        noise = torch.randn(emb.shape, generator=gen, device=emb.device, dtype=emb.dtype)
        hidden = model.base_model(inputs_embeds=emb + sigma * rms * noise, attention_mask=batch.get("attention_mask"))
        out.append(logprobs_from_hidden(model, hidden.last_hidden_state, batch["labels"])[0])
    return torch.stack(out)


def token_batch(rule: Rule, model: Any, batch: dict[str, Tensor], reference: Any = None, pad_id: int = 0) -> TokenBatch:
    """The current model's log p (with gradient) plus whatever ``rule.needs``, as a ``TokenBatch``."""
    ids, labels, att = batch["input_ids"], batch["labels"], batch.get("attention_mask")
    if "reference" in rule.needs and reference is None:
        raise TrainRuleError(f"rule {rule.id!r} needs a frozen reference model: pass reference=... (e.g. a copy of "
                             "the model before training)")
    attn = None
    if "attention" in rule.needs:
        with prompt_attention(model, prompt_lengths(labels)) as rec:
            logp, mask = token_logprobs(model, ids, labels, att)
        attn = torch.zeros_like(rec.value)
        attn[:, :-1] = rec.value[:, 1:]  # the target token's own attention row, in column layout
    else:
        logp, mask = token_logprobs(model, ids, labels, att)
    ref = None
    if "reference" in rule.needs:
        with torch.no_grad():
            ref = token_logprobs(reference, ids, labels, att)[0]
    free = free_logprobs(model, ids, labels, pad_id) if "no_prompt" in rule.needs else None
    pert = None
    if "perturbed" in rule.needs:
        pert = perturbed_logprobs(model, batch, getattr(rule, "k", 2), getattr(rule, "sigma", 0.05))
    noise = shifted(batch["noise"].long())[0] == 1 if "noise" in batch else None
    return TokenBatch(logp, mask, ref, attn, free, pert, noise)


def token_loss(rule: Rule, model: Any, batch: dict[str, Tensor], reference: Any = None, pad_id: int = 0):
    """(loss, TokenBatch) for one batch under ``rule``; backpropagate the loss as usual."""
    if getattr(rule, "pairwise", False):
        raise TrainRuleError(f"rule {rule.id!r} is pairwise (DPO): use tokensieve.train.pair_loss with chosen and "
                             "rejected batches")
    b = token_batch(rule, model, batch, reference, pad_id)
    return rule.loss(b), b
