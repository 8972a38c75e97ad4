"""Turn scores into kept indices, with protected tokens handled the same way for every method."""

from __future__ import annotations

import torch
from torch import Tensor


def protection_mask(valid: Tensor | None, batch: int, n_tokens: int, sinks: int, window: int, device=None) -> Tensor:
    """Bool [B, T]: the first ``sinks`` and last ``window`` *real* tokens of each row (padding skipped)."""
    if valid is None:
        valid = torch.ones(batch, n_tokens, dtype=torch.bool, device=device)
    rank = valid.long().cumsum(-1) - 1  # 0 for the first real token
    back = valid.long().flip(-1).cumsum(-1).flip(-1) - 1  # 0 for the last real token
    return valid & ((rank < sinks) | (back < window))


def first_real(valid: Tensor | None, batch: int, device=None) -> Tensor:
    """[B] index of each row's first real token (0 without padding): where a left-padded row starts."""
    if valid is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return valid.long().argmax(-1)


def left_align(x: Tensor, valid: Tensor | None, dim: int = -1, undo: bool = False) -> Tensor:
    """Roll each row of ``x`` (batch first) along ``dim`` so its first real token sits at slot 0 (``undo``: back
    to the left-padded layout). Scores that group tokens from slot 0 (windows, chunks) see each row as it is
    alone; the padding moves to the end. Without padding, ``x`` itself."""
    if valid is None or bool(valid.all()):
        return x
    dim = dim % x.dim()
    t = x.shape[dim]
    start = first_real(valid, valid.shape[0], x.device)
    shift = start if not undo else -start
    idx = (torch.arange(t, device=x.device)[None] + shift[:, None]) % t  # [B, T]
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = t
    return x.gather(dim, idx.view(view).expand(x.shape))


def rank(scores: Tensor, valid: Tensor | None, sinks: int = 0, window: int = 0) -> Tensor:
    """Token indices [B, Hkv, T] from most to least wanted: protected tokens first, padding last, ties
    towards the later token (deterministic)."""
    b, _h, t = scores.shape
    s = scores.float().nan_to_num(nan=float("-inf")).clone()
    protect = protection_mask(valid, b, t, sinks, window, s.device)
    s.masked_fill_(protect[:, None, :], float("inf"))
    if valid is not None:
        s.masked_fill_(~valid[:, None, :], float("-inf"))
    # a stable sort over the reversed row breaks ties towards later tokens, deterministically
    return t - 1 - torch.argsort(s.flip(-1), dim=-1, descending=True, stable=True)


def select(scores: Tensor, budget: int, valid: Tensor | None, sinks: int = 0, window: int = 0) -> Tensor:
    """Indices [B, Hkv, budget] of the kept tokens, ascending. Protected tokens always win, padding
    always loses (a row with fewer real tokens than the budget keeps all of them plus some padding,
    which stays masked). Ties break towards the later token, deterministically."""
    return rank(scores, valid, sinks, window)[..., :budget].sort(dim=-1).values


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, H, T, D] -> [B, H, k, D] at per-head indices [B, H, k]."""
    return x.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def global_counts(scores: dict[int, Tensor], budget: int, valid: Tensor | None) -> dict[int, Tensor]:
    """Per layer ``[B, Hkv]``: how many of each head's slots are among the top ``budget x layers x heads`` scores
    of its row over the whole cache (at least one per head)."""
    ids = sorted(scores)
    s = torch.stack([scores[i].float() for i in ids], 1)  # [B, L, Hkv, T]
    if valid is not None:
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    b, n_layers, h, t = s.shape
    top = s.reshape(b, -1).topk(min(budget * n_layers * h, n_layers * h * t), -1).indices
    hit = torch.zeros(b, n_layers * h * t, dtype=torch.long, device=s.device).scatter_(1, top, 1)
    per_head = hit.view(b, n_layers, h, t).sum(-1).clamp(min=1)
    return {i: per_head[:, n] for n, i in enumerate(ids)}
