"""Fidelity metrics of a compressed cache against the full cache (pure torch, no tokensieve imports).

The kvpress worker runs in another virtual environment and loads this file by path, so both sides
score their cells with the same code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reference(true_logits: Tensor) -> Tensor:
    """Log-probabilities [L, V] of the full cache along the true continuation: what cells compare against."""
    return torch.log_softmax(true_logits.float(), dim=-1)


def fidelity(
    true_logits: Tensor,
    targets: Tensor,
    ref_logprobs: Tensor,
    greedy_logits: Tensor,
    greedy_targets: Tensor,
) -> dict[str, float]:
    """One cell's metrics.

    true_logits [L, V]: the cell's logits along the true continuation (teacher forced), predicting
    ``targets [L]``; ``ref_logprobs [L, V]``: the full cache's log-probabilities at the same positions;
    greedy_logits [G, V]: the cell's logits along the full cache's greedy continuation, whose next
    tokens are ``greedy_targets [G]``.

    - nll: mean -log p(target) (nats/token);
    - kl: mean KL(full || cell) over positions (nats);
    - top1: fraction of positions whose argmax equals the full cache's argmax;
    - greedy: (tokens before the first greedy mismatch) / G. Until the first mismatch a free-running greedy
      decode from the cell would have produced exactly the full cache's tokens, so this is the
      free-running agreement, from one teacher-forced pass.
    """
    logp = torch.log_softmax(true_logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.view(-1, 1)).mean()
    ref = ref_logprobs.float()
    kl = (ref.exp() * (ref - logp)).sum(-1).clamp(min=0).mean()
    top1 = (logp.argmax(-1) == ref.argmax(-1)).float().mean()
    same = greedy_logits.argmax(-1) == greedy_targets
    miss = (~same).nonzero()
    first = int(miss[0, 0]) if miss.numel() else same.numel()
    return {
        "nll": float(nll),
        "kl": float(kl),
        "top1": float(top1),
        "greedy": first / max(1, same.numel()),
    }


def target_logprobs(true_logits: Tensor, targets: Tensor) -> list[float]:
    """Per-position log p(target): what the kvpress agreement check compares between engines."""
    logp = torch.log_softmax(true_logits.float(), dim=-1)
    return [round(float(x), 6) for x in logp.gather(-1, targets.view(-1, 1)).view(-1)]
