"""A ``transformers.Trainer`` whose loss is a tokensieve rule, computed inside ``compute_loss``.

Token weights are computed in the loss from the batch a standard collator makes (a reference model's
forward runs there when the rule needs one), so datasets and collators need no change. The rule's loss
is a mean over the batch's kept tokens; with gradient accumulation each micro-batch is averaged on its
own (``num_items_in_batch`` is not used), as the rules define their normalisation per batch.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from tokensieve.train.base import Rule
from tokensieve.train.loop import frozen_copy
from tokensieve.train.loss import token_loss


class TokenSieveTrainer(Trainer):
    """``Trainer(..., rule=tokensieve.train.rule("dft"), reference=None, refresh=0)``. A rule that needs a
    reference gets a frozen copy of the model at construction unless one is given; ``refresh`` > 0
    re-snapshots it every that many optimizer steps (ssToken's history model)."""

    def __init__(self, *args: Any, rule: Rule, reference: Any = None, refresh: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.refresh = refresh
        self.reference = reference
        if "reference" in rule.needs and reference is None:
            self.reference = frozen_copy(self.model)
        self._snapshot_step = 0

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        step = self.state.global_step
        if self.refresh and self.reference is not None and step and step % self.refresh == 0 \
                and step != self._snapshot_step:
            self.reference.load_state_dict(self.accelerator.unwrap_model(model).state_dict())
            self._snapshot_step = step
        pad = getattr(self.processing_class, "pad_token_id", None) or 0
        loss, tb = token_loss(self.rule, self.accelerator.unwrap_model(model), inputs, self.reference, pad)
        return (loss, {"weights": self.rule.weights(tb).detach()}) if return_outputs else loss
