"""Pure selection functions for sparse decoding, on small tensors (no model, no cache).

Shapes: one decode query per row, grouped per KV head, ``q: [B, Hkv, G, D]`` (already multiplied by the
attention scaling); keys ``k: [B, Hkv, S, D]``; ``valid: [B, S]`` (False = padding) or None. A score is
``[B, Hkv, S]`` (larger = read). Everything is vectorised over tokens, pages and blocks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG = float("-inf")


def logits(q: Tensor, k: Tensor) -> Tensor:
    """Exact q.k for every head of each group: [B, Hkv, G, S]."""
    return torch.matmul(q, k.transpose(-1, -2))


def group_probs(lg: Tensor, valid: Tensor | None) -> Tensor:
    """Per-head softmax over the slots, then the mean over each GQA group: [B, Hkv, S]."""
    if valid is not None:
        lg = lg.masked_fill(~valid[:, None, None, :], NEG)
    return torch.softmax(lg, -1).nan_to_num(0.0).mean(2)


def mask_padding(scores: Tensor, valid: Tensor | None) -> Tensor:
    return scores if valid is None else scores.masked_fill(~valid[:, None, :], NEG)


def top_slots(scores: Tensor, k: int, valid: Tensor | None, sinks: int = 0, window: int = 0) -> Tensor:
    """Indices [B, H, k] of the slots to read: the protected first ``sinks`` and last ``window`` real slots,
    then the best scores; padding only when a row has fewer than ``k`` real slots. One ``topk``, no sort:
    read order does not matter to attention."""
    s = scores.float().clone()
    if valid is None:
        s[..., :sinks] = float("inf")
        if window:
            s[..., -window:] = float("inf")
    else:
        from tokensieve.core.ops.select import protection_mask

        protect = protection_mask(valid, s.shape[0], s.shape[-1], sinks, window, s.device)
        s = s.masked_fill(protect[:, None, :], float("inf")).masked_fill(~valid[:, None, :], NEG)
    return s.nan_to_num_(nan=NEG).topk(k, dim=-1, sorted=False).indices


# --- Quest: page bounds --------------------------------------------------------------------------


def page_minmax(k: Tensor, valid: Tensor | None, page: int) -> tuple[Tensor, Tensor]:
    """Per-channel min and max of the keys of each page of ``page`` slots: two [B, Hkv, P, D] (padding
    slots are ignored; a page of padding only gets +inf / -inf, so its bound is -inf)."""
    b, h, s, d = k.shape
    n_pages = math.ceil(s / page)
    pad = n_pages * page - s
    lo, hi = k, k
    if valid is not None:
        lo = k.masked_fill(~valid[:, None, :, None], float("inf"))
        hi = k.masked_fill(~valid[:, None, :, None], NEG)
    if pad:
        lo = torch.cat([lo, lo.new_full((b, h, pad, d), float("inf"))], 2)
        hi = torch.cat([hi, hi.new_full((b, h, pad, d), NEG)], 2)
    return lo.view(b, h, n_pages, page, d).amin(3), hi.view(b, h, n_pages, page, d).amax(3)


def quest_bounds(q: Tensor, kmin: Tensor, kmax: Tensor) -> Tensor:
    """Quest's upper bound on q.k over each page, per query head: sum_c max(q_c min_c, q_c max_c).
    q [B, Hkv, G, D], kmin/kmax [B, Hkv, P, D] -> [B, Hkv, G, P]."""
    qq = q.unsqueeze(3)  # [B, Hkv, G, 1, D]
    lo, hi = kmin.unsqueeze(2), kmax.unsqueeze(2)  # [B, Hkv, 1, P, D]
    bound = torch.maximum(qq * lo, qq * hi).sum(-1)
    empty = torch.isinf(lo).all(-1) & (lo > 0).all(-1)  # pages holding only padding
    return bound.nan_to_num(nan=NEG).masked_fill(empty, NEG)


def pages_to_tokens(page_scores: Tensor, page: int, n_slots: int) -> Tensor:
    """[B, Hkv, P] -> [B, Hkv, S]: each slot gets its page's score."""
    return page_scores.repeat_interleave(page, dim=-1)[..., :n_slots]


# --- HISA: blocks, then tokens --------------------------------------------------------------------


def block_means(k: Tensor, valid: Tensor | None, block: int) -> Tensor:
    """The mean key of each block of ``block`` slots (padding excluded): [B, Hkv, NB, D]."""
    b, h, s, d = k.shape
    nb = math.ceil(s / block)
    w = torch.ones(b, s, device=k.device) if valid is None else valid.float()
    pad = nb * block - s
    kk = torch.cat([k * w[:, None, :, None], k.new_zeros(b, h, pad, d)], 2) if pad else k * w[:, None, :, None]
    ww = torch.cat([w, w.new_zeros(b, pad)], 1) if pad else w
    sums = kk.view(b, h, nb, block, d).sum(3)
    counts = ww.view(b, nb, block).sum(2).clamp(min=1)
    return sums / counts[:, None, :, None]


def hierarchical_scores(
    q: Tensor, k: Tensor, valid: Tensor | None, block: int, n_blocks: int, means: Tensor | None = None
) -> Tensor:
    """Coarse: score blocks by q . mean key (summed over the group), keep the top ``n_blocks``. Fine: the
    group-mean attention among the slots of those blocks only (their keys are gathered; nothing else is
    read); every other slot is -inf. [B, Hkv, S]."""
    b, h, s, d = k.shape
    means = block_means(k, valid, block) if means is None else means
    coarse = logits(q, means).sum(2)  # [B, Hkv, NB]
    n_total = means.shape[2]
    if valid is not None:
        has_real = torch.cat([valid, valid.new_zeros(b, n_total * block - s)], 1).view(b, -1, block).any(-1)
        coarse = coarse.masked_fill(~has_real[:, None, :], NEG)
    top = coarse.topk(min(n_blocks, n_total), dim=-1, sorted=False).indices  # [B, Hkv, nb]
    slots = (top[..., None] * block + torch.arange(block, device=k.device)).flatten(2)  # [B, Hkv, nb * block]
    inside = slots < s
    slots = slots.clamp(max=s - 1)
    if valid is not None:
        inside &= valid.gather(1, slots.flatten(1)).view_as(slots)
    fine = logits(q, k.gather(2, slots[..., None].expand(-1, -1, -1, d)))  # [B, Hkv, G, nb * block]
    fine = torch.softmax(fine.masked_fill(~inside[:, :, None], NEG), -1).nan_to_num(0.0).mean(2)
    out = torch.full((b, h, s), NEG, device=k.device)
    return out.scatter_reduce_(-1, slots, fine.masked_fill(~inside, NEG), "amax")


# --- channel and frequency-chunk approximations -------------------------------------------------------


def channel_scores(q: Tensor, labels: Tensor, channels: Tensor, valid: Tensor | None) -> Tensor:
    """Double Sparsity: q.k over a few channels per KV head. ``labels [B, Hkv, S, r]`` hold those channels
    of the keys (the label cache), ``channels [Hkv, r]`` their indices. Per-head softmax, GQA mean."""
    qc = q.gather(-1, channels[None, :, None, :].expand(q.shape[0], -1, q.shape[2], -1))
    return group_probs(logits(qc, labels), valid)


def rope_chunk_channels(chunks: Tensor, head_dim: int) -> Tensor:
    """RoPE frequency chunk f is the channel pair (f, f + D/2) (transformers' rotate_half layout):
    [Hkv, n] chunk ids -> [Hkv, 2n] channel ids."""
    return torch.cat([chunks, chunks + head_dim // 2], -1)


# --- oracles and measures ------------------------------------------------------------------------


def exact_topk(probs: Tensor, k: int, valid: Tensor | None) -> Tensor:
    """Indices [B, Hkv, k] of the top-k slots by true attention (the oracle every selector is held to)."""
    return mask_padding(probs, valid).topk(min(k, probs.shape[-1]), dim=-1).indices


def overlap(
    selected: Tensor,
    truth: Tensor,
    n_slots: int,
    selected_mask: Tensor | None = None,
    truth_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(recall, IoU) per [B, Hkv]: |S & T| / |T| and |S & T| / |S | T| for index sets [B, Hkv, k]
    (the masks, if given, drop entries of either set)."""
    b, h = selected.shape[:2]
    s = torch.zeros(b, h, n_slots, dtype=torch.bool, device=selected.device)
    s.scatter_(-1, selected, True if selected_mask is None else selected_mask)
    t = torch.zeros_like(s).scatter_(-1, truth, True if truth_mask is None else truth_mask)
    inter = (s & t).sum(-1).float()
    return inter / t.sum(-1).clamp(min=1), inter / (s | t).sum(-1).clamp(min=1)
