"""Merging evicted tokens into kept ones (EMS, CaM), as pure functions on one head's tokens.

A kept slot that absorbs tokens stands for all of them: its key and value become a weighted average, and
its *weight* (how many tokens it stands for) is the sum of its members' weights. The cache adds
``log(weight)`` to the slot's attention logits, so a slot of weight ``m`` draws the attention ``m`` equal
tokens would (ToMe's proportional attention): merging exact duplicates changes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def merge_into(
    keep_k: Tensor,
    keep_v: Tensor,
    drop_k: Tensor,
    drop_v: Tensor,
    threshold: float,
    keep_w: Tensor | None = None,
    drop_w: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fold every dropped token whose key has cosine similarity >= ``threshold`` with its nearest kept key into
    that kept token. Keys and values ``[n, D]``, weights ``[n]`` (1 when None).

    Members are averaged with weights ``weight x similarity`` (the kept token itself has similarity 1), the
    similarity-weighted average of EMS; the slot's weight becomes the sum of its members' weights.
    Returns (keys, values, weights) of the kept slots and the bool ``[n_drop]`` of merged tokens."""
    n_keep = keep_k.shape[0]
    keep_w = torch.ones(n_keep, device=keep_k.device) if keep_w is None else keep_w.float()
    drop_w = torch.ones(drop_k.shape[0], device=keep_k.device) if drop_w is None else drop_w.float()
    if drop_k.shape[0] == 0 or n_keep == 0:
        return keep_k, keep_v, keep_w, torch.zeros(drop_k.shape[0], dtype=torch.bool, device=keep_k.device)
    sim = F.normalize(drop_k.float(), dim=-1) @ F.normalize(keep_k.float(), dim=-1).T  # [n_drop, n_keep]
    best, into = sim.max(-1)
    merged = best >= threshold
    into, a = into[merged], (drop_w * best.clamp(min=0))[merged]
    avg_w = keep_w.clone().index_add_(0, into, a)  # the averaging weights
    k = (keep_k.float() * keep_w[:, None]).index_add_(0, into, drop_k[merged].float() * a[:, None])
    v = (keep_v.float() * keep_w[:, None]).index_add_(0, into, drop_v[merged].float() * a[:, None])
    weights = keep_w.clone().index_add_(0, into, drop_w[merged])  # the attention weights: sums of members
    dtype = keep_k.dtype
    return (k / avg_w[:, None]).to(dtype), (v / avg_w[:, None]).to(dtype), weights, merged


def compensation_token(drop_k: Tensor, drop_v: Tensor) -> tuple[Tensor, Tensor, float]:
    """RazorAttention's compensation token: the mean key and value of what a head dropped, standing for all of
    them (weight = their number)."""
    n = drop_k.shape[0]
    return drop_k.mean(0, keepdim=True), drop_v.mean(0, keepdim=True), float(n)


def with_compensation_token(
    keep_k: Tensor, keep_v: Tensor, drop_k: Tensor, drop_v: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The kept tokens with the compensation token of the dropped ones in front: keys, values ``[1 + n, D]`` and
    the logit bias ``[1 + n]`` (log of its weight for the compensation token, 0 for the kept ones)."""
    ck, cv, count = compensation_token(drop_k, drop_v)
    bias = torch.zeros(keep_k.shape[0], device=keep_k.device)
    return torch.cat([ck, keep_k]), torch.cat([cv, keep_v]), torch.cat([bias.new_full((1,), math.log(count)), bias])
