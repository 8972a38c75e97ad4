from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tokensieve.kv.prune.base import Pruner


@dataclass
class LazyLLM(Pruner):
    """Progressive pruning by the last token's attention (mean over heads) in the layer before each pruning
    layer. A pruned token's hidden state goes to an aux cache; while generating, a token that the new
    query ranks among the top ``keep`` again (in the layer before its pruning layer) is revived: its hidden
    state is taken from the aux cache and computed from that layer on, once, instead of from the start."""

    id = "lazyllm"
    paper = "LazyLLM: Dynamic Token Pruning for Efficient Long Context LLM Inference (Fu et al., 2024)"
    rule = "prune prompt tokens with low last-token attention, more in deeper layers; revive from an aux cache"
    revive: ClassVar[bool] = True
