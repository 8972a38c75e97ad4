"""Per-token log-probabilities from a causal LM without a full ``[T, vocab]`` logits tensor.

The decoder's hidden states go through the output embedding a chunk of tokens at a time; each chunk is
checkpointed, so backward recomputes its logits instead of holding them: peak memory is one chunk's
``[chunk, vocab]`` whatever the sequence length. Training sequences here are short (<= 128 tokens), and
the same path is used for them: a batch of 8 x 128 is 1024 rows, four chunks of 256.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE = -100
CHUNK = 256  # rows of hidden states per logits chunk: 256 x 49k vocab x 4 B = 50 MB


def _chunk_logprob(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, cap: float | None) -> Tensor:
    logits = F.linear(h, weight, bias).float()
    if cap:  # final-logit soft-capping, where the config asks for it
        logits = torch.tanh(logits / cap) * cap
    return -F.cross_entropy(logits, target.clamp_min(0), reduction="none")


def shifted(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(targets, mask) for next-token prediction: position t predicts labels[t + 1]."""
    target = torch.full_like(labels, IGNORE)
    target[:, :-1] = labels[:, 1:]
    return target, target != IGNORE


def token_logprobs(
    model: Any, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None, chunk: int = CHUNK,
    **forward: Any,
) -> tuple[Tensor, Tensor]:
    """(log p(label) ``[B, T]``, valid mask ``[B, T]``), aligned so that column t scores token t + 1."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, **forward)
    return logprobs_from_hidden(model, out.last_hidden_state, labels, chunk)


def logprobs_from_hidden(model: Any, hidden: Tensor, labels: Tensor, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    head = model.get_output_embeddings()
    cap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    target, mask = shifted(labels)
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1)
    parts = []
    for lo in range(0, flat_h.shape[0], chunk):
        h, t = flat_h[lo : lo + chunk], flat_t[lo : lo + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_chunk_logprob, h, head.weight, head.bias, t, cap, use_reentrant=False))
        else:
            parts.append(_chunk_logprob(h, head.weight, head.bias, t, cap))
    logp = torch.cat(parts).view_as(target)
    return logp.masked_fill(~mask, 0.0), mask
