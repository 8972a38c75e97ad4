from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import check_choice
from tokensieve.kv.heads import evict_layer, evict_to_counts
from tokensieve.kv.methods.kvzip import KVzip

if TYPE_CHECKING:
    from tokensieve.kv.budget import Allocator
    from tokensieve.kv.cache import SieveLayer


def composite_counts(scores: dict[int, Tensor], budget: int, valid: Tensor | None) -> dict[int, Tensor]:
    """Per layer ``[B, Hkv]``: KVCompose's count. Each head's scores sorted (best first) and averaged rank by rank
    across the layer's heads give its composite tokens; one top ``budget x layers`` over every layer's composites
    says how many each layer keeps (at least one), the same in each of its heads."""
    ids = sorted(scores)
    comp = []
    for i in ids:
        s = scores[i].float()
        if valid is not None:
            s = s.masked_fill(~valid[:, None], float("-inf"))
        comp.append(s.sort(-1, descending=True).values.mean(1))  # [B, T]
    c = torch.stack(comp, 1)  # [B, L, T]
    b, n_layers, t = c.shape
    top = c.reshape(b, -1).topk(min(budget * n_layers, n_layers * t), -1).indices
    per_layer = torch.zeros(b, n_layers * t, dtype=torch.long).scatter_(1, top.cpu(), 1).view(b, n_layers, t).sum(-1)
    h = scores[ids[0]].shape[1]
    return {i: per_layer[:, n].clamp(min=1)[:, None].expand(b, h) for n, i in enumerate(ids)}


@dataclass
class KVCompose(KVzip):
    """A second pass of the context over its own cache (kvzip's pass with no prompt: the context teacher-forced
    again right after itself); a pair scores the most attention any query of that pass pays it, over its GQA group
    (``group="max"``) or each query head's most averaged over it (``"mean"``); ``head_mean`` adds the layer's mean
    over its KV heads to every head's score. With ``scope="global"`` (default) the budget is spent by composite
    tokens: each head's scores sorted and averaged rank by rank across the layer's heads, one top-k over every
    layer's composites sets each layer's count, and every head keeps its own best that many (layers differ, heads
    within a layer do not: dense, aligned). ``scope="layer"`` evicts each layer to its allocator's budget.
    kvpress's ``KVComposePress`` defaults are ``group=mean:head_mean=true`` (it also lifts layer 0's composites to the
    max over layers); the defaults here keep kvzip's max (METHODS.md leaves the reduction open; docs/kv-breadth.md)."""

    id = "kvcompose"
    paper = "KVCompose: Efficient Structured KV Cache Compression with Composite Tokens (2025)"
    rule = "max attention of a second context pass; per-head sorted scores averaged by rank; global top-k sets layers"

    prompt: str = ""
    group: str = "max"
    head_mean: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("group", self.group, ("max", "mean"))

    def pass_group(self) -> str:
        return self.group

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        out = super().whole_pass(pre)
        if not self.head_mean:
            return out
        scores = {i: s + s.mean(1, keepdim=True) for i, (s, _) in out.items()}  # a slot all heads read rises
        shared = {"scores": scores, "counts": {}}
        return {i: (s, shared) for i, s in scores.items()}

    def act(self, layer: SieveLayer, x: ScoreInputs, budget: int, allocator: Allocator | None, inplace: bool):
        own, shared = x.require_pass_score()
        if self.scope == "layer":
            return evict_layer(layer, own, budget, *self.protected(budget), allocator, inplace)
        key = ("composite", budget)
        if key not in shared["counts"]:
            shared["counts"][key] = composite_counts(shared["scores"], budget, x.valid)
        return evict_to_counts(layer, own, shared["counts"][key][layer.layer_idx], inplace)
