"""A plain PyTorch training loop over the same loss as the Trainer: ``token_loss(rule, model, batch, ...)``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tokensieve.train.base import Rule
from tokensieve.train.loss import token_loss


def frozen_copy(model: Any) -> Any:
    """A frozen snapshot of ``model`` (the reference / history model)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def make_optimizer(model: Any, lr: float) -> torch.optim.Optimizer:
    """AdamW at a constant ``lr`` over the trainable parameters (the same in every arm)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


@dataclass
class StepLog:
    step: int
    loss: float
    kept: float  # fraction of response tokens with nonzero weight
    trained: int  # response tokens with nonzero weight in this step (what the step actually trained on)
    noise_kept: float | None  # the same over injected-noise tokens (None without noise labels)


def train(
    rule: Rule,
    model: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 1e-4,
    reference: Any = None,
    refresh: int = 0,
    pad_id: int = 0,
    bf16: bool = False,
    on_step: Callable[[StepLog], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    start: int = 0,
) -> Iterator[StepLog]:
    """Train ``model`` in place for ``steps`` batches with AdamW at a constant ``lr``; yields one log per step.
    ``refresh`` > 0 re-snapshots the reference every that many steps (ssToken's history model). To resume,
    pass the saved ``optimizer`` and ``start`` (steps done); ``batches`` must start at the first undone batch."""
    if "reference" in rule.needs and reference is None:
        reference = frozen_copy(model)
    opt = optimizer or make_optimizer(model, lr)
    model.train()
    it = iter(batches)
    for step in range(start, steps):
        if refresh and step and step % refresh == 0 and reference is not None:
            reference.load_state_dict(model.state_dict())
        batch = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, tb = token_loss(rule, model, batch, reference, pad_id)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        w = rule.weights(tb).detach()
        kept = ((w > 0) & tb.mask).float()
        noise_kept = None
        if tb.noise is not None and (tb.noise & tb.mask).any():
            noise_kept = float(kept[tb.noise & tb.mask].mean())
        log = StepLog(step + 1, float(loss.detach()), float(kept[tb.mask].mean()), int(kept[tb.mask].sum()), noise_kept)
        if on_step is not None:
            on_step(log)
        yield log
    model.eval()
