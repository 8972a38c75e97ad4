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


LONG_GAIN = 1.0  # nats: a target is long-range when the whole context makes it e times likelier
SHORT_CONTEXT = 128  # tokens: the short context that long-range targets are compared against


def long_positions(ref_logprobs: Tensor, short_logprobs: Tensor, targets: Tensor, gain: float = LONG_GAIN) -> Tensor:
    """Bool [L]: positions whose true token the full context predicts at least ``gain`` nats better than
    the last ``SHORT_CONTEXT`` tokens alone (LongPPL's idea: the tokens that need the long context)."""
    full = ref_logprobs.float().gather(-1, targets.view(-1, 1)).view(-1)
    short = short_logprobs.float().gather(-1, targets.view(-1, 1)).view(-1)
    return (full - short) > gain


def fidelity(
    true_logits: Tensor,
    targets: Tensor,
    ref_logprobs: Tensor,
    greedy_logits: Tensor,
    greedy_targets: Tensor,
    long: Tensor | None = None,
) -> dict[str, float | None]:
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
      free-running agreement, from one teacher-forced pass;
    - nll_long, kl_long, n_long: NLL and KL at the ``long`` positions only (``long_positions``), the
      tokens that need more than the recent context; None when a sample has none.
    """
    logp = torch.log_softmax(true_logits.float(), dim=-1)
    nll_pos = -logp.gather(-1, targets.view(-1, 1)).view(-1)
    nll = nll_pos.mean()
    ref = ref_logprobs.float()
    kl_pos = (ref.exp() * (ref - logp)).sum(-1).clamp(min=0)
    kl = kl_pos.mean()
    top1 = (logp.argmax(-1) == ref.argmax(-1)).float().mean()
    same = greedy_logits.argmax(-1) == greedy_targets
    miss = (~same).nonzero()
    first = int(miss[0, 0]) if miss.numel() else same.numel()
    n_long = int(long.sum()) if long is not None else 0
    return {
        "nll": float(nll),
        "kl": float(kl),
        "top1": float(top1),
        "greedy": first / max(1, same.numel()),
        "nll_long": float(nll_pos[long].mean()) if n_long else None,
        "kl_long": float(kl_pos[long].mean()) if n_long else None,
        "n_long": n_long,
    }


def target_logprobs(true_logits: Tensor, targets: Tensor) -> list[float]:
    """Per-position log p(target): what the kvpress agreement check compares between engines."""
    logp = torch.log_softmax(true_logits.float(), dim=-1)
    return [round(float(x), 5) for x in logp.gather(-1, targets.view(-1, 1)).view(-1)]
