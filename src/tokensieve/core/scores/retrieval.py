"""Which heads retrieve, measured on synthetic inputs: pure functions on captured attention rows.

- Echo and induction (RazorAttention): on a random sequence repeated twice, a query in the second copy at
  the token of position ``j`` of the first copy can attend to ``j`` itself (the previous occurrence of the
  same token: an *echo* head) or to ``j + 1`` (the token that followed it: an *induction* head, the copying
  circuit that lets a model retrieve from anywhere in its context).
- Semantic retrieval (CompressKV): on a needle-in-a-haystack prompt, the attention the question and answer
  rows pay to the needle span and its surroundings, not just to the copied tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def echo_induction(probs: Tensor, period: int) -> tuple[Tensor, Tensor]:
    """Mean attention ``[B, Hkv, G]`` to the previous occurrence (echo) and to the token after it (induction).

    ``probs [B, Hkv, G, n, T]``: the attention of the last ``n <= period`` rows of a sequence that repeats with
    ``period`` (row at position ``p`` has its previous occurrence at ``p - period``)."""
    *_, n, t = probs.shape
    rows = torch.arange(t - n, t, device=probs.device)
    prev = rows - period
    if bool((prev < 0).any()):
        raise ValueError(f"rows {int(rows[0])}.. have no previous occurrence at period {period}")
    echo = probs.gather(-1, prev.view(1, 1, 1, n, 1).expand(*probs.shape[:-1], 1)).squeeze(-1)
    induction = probs.gather(-1, (prev + 1).view(1, 1, 1, n, 1).expand(*probs.shape[:-1], 1)).squeeze(-1)
    return echo.mean(-1), induction.mean(-1)


def span_mass(probs: Tensor, start: int, stop: int, margin: int = 0) -> Tensor:
    """Mean attention mass ``[B, Hkv, G]`` the captured rows pay to tokens ``[start - margin, stop + margin)``."""
    t = probs.shape[-1]
    lo, hi = max(0, start - margin), min(t, stop + margin)
    return probs[..., lo:hi].sum(-1).mean(-1)


def output_error(probs: Tensor, values: Tensor, kept: Tensor) -> Tensor:
    """Relative error ``[B, Hkv]`` of the attention output of the captured rows when each KV head keeps only
    ``kept [B, Hkv, T]`` (bool; softmax renormalised over the kept keys), averaged over rows and group heads.

    ``probs [B, Hkv, G, n, T]``, ``values [B, Hkv, T, D]``."""
    full = torch.einsum("bhgnt,bhtd->bhgnd", probs, values.float())
    p = probs * kept[:, :, None, None, :]
    p = p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)
    part = torch.einsum("bhgnt,bhtd->bhgnd", p, values.float())
    err = (full - part).norm(dim=-1) / full.norm(dim=-1).clamp(min=1e-12)
    return err.mean((2, 3))


def srh_scores(probs: Tensor, retrieval: Tensor, heads: int) -> Tensor:
    """Window attention ``probs [B, Hkv, G, n, T]`` summed over rows, read only from the layer's ``heads``
    strongest semantic retrieval heads (``retrieval [H]``, one score per query head). A GQA group's score is the
    mean over its own retrieval heads; a group without one takes the mean over the layer's retrieval heads."""
    b, hkv, g, _, t = probs.shape
    top = retrieval.topk(min(heads, retrieval.numel())).indices.to(probs.device)
    chosen = torch.zeros(hkv * g, dtype=torch.bool, device=probs.device)
    chosen[top] = True
    chosen = chosen.view(hkv, g)
    summed = probs.sum(3)  # [B, Hkv, G, T]
    layer = summed.reshape(b, hkv * g, t)[:, top].mean(1)  # [B, T]
    own = (summed * chosen[None, :, :, None]).sum(2) / chosen.sum(1).clamp(min=1)[None, :, None]
    return torch.where(chosen.any(1)[None, :, None], own, layer[:, None, :])
