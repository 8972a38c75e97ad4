"""Faithfulness of a ranking, measured with the model, plus the agreement between rankings.

- Comprehensiveness at k: ``s(x) - s(x with the top k% replaced)``; sufficiency at k: ``s(x) - s(x with
  all but the top k% replaced)``. AOPC is the mean over k in ``KS``. Tokens are replaced by the baseline
  token, never deleted, so every other token keeps its position.
- Soft-NC / Soft-NS (Zhao & Aletras, 2023), the paper's soft perturbation of the input *embeddings*: every
  element of a context token's embedding is kept by a Bernoulli draw, with keep-probability ``1 - w`` (Soft-NC:
  the important tokens are mostly erased) or ``w`` (Soft-NS: mostly only they survive), ``w`` the min-max scaled
  importance; a dropped element is 0. Normalised as in Carton et al. (2020) by the empty context (every context
  embedding element dropped), ``S0 = 1 - max(0, s(x) - s(0))``: ``NC = max(0, s(x) - s(x~)) / (1 - S0)``,
  ``NS = (S(x~) - S0) / (1 - S0)`` with ``S(z) = 1 - max(0, s(x) - s(z))``, both clipped to [0, 1] (a
  perturbation that scores below the empty context would otherwise leave the range). Until issue 26 this
  module replaced whole tokens with probability ``w`` instead (not the paper's metric); results rows written
  before then carry that version's figures.
- Every figure is also computed for random rankings (``n_random`` draws from ``random_rankings``, the same
  for every method on a problem): ``*_random`` is their mean, ``*_random_sd`` the spread between draws (sample
  SD; nan for one draw), ``*_ratio`` the method's figure over the random mean.
- Saturation: ``saturation@1 = comp@1 / (s(x) - s(empty))``, the share of the removable score (the target less
  its value with every context token replaced) that removing the top 1% already removes; ``saturation@1_random``
  the same for the random rankings. Near 1 for both, comprehensiveness cannot separate rankings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tokensieve.explain.target import Problem

KS = (1, 5, 10, 20, 50)


def top_masks(scores: Tensor, ks: tuple[int, ...] = KS) -> Tensor:
    """Bool ``[len(ks), n]``: the top ``k%`` tokens (at least one) by score."""
    n = scores.numel()
    order = torch.argsort(scores, descending=True, stable=True)
    masks = torch.zeros(len(ks), n, dtype=torch.bool)
    for i, k in enumerate(ks):
        masks[i, order[: max(1, round(k * n / 100))]] = True
    return masks


def aopc(problem: Problem, scores: Tensor, base: float, ks: tuple[int, ...] = KS) -> dict[str, float]:
    masks = top_masks(scores, ks)
    out = problem.score(problem.replaced(torch.cat([masks, ~masks])))
    comp, suff = base - out[: len(ks)], base - out[len(ks) :]
    row = {"comprehensiveness": float(comp.mean()), "sufficiency": float(suff.mean())}
    row.update({f"comp@{k}": float(c) for k, c in zip(ks, comp, strict=True)})
    row.update({f"suff@{k}": float(s) for k, s in zip(ks, suff, strict=True)})
    return row


@torch.no_grad()
def soft(problem: Problem, scores: Tensor, base: float, samples: int, seed: int, batch: int = 8) -> dict[str, float]:
    """Soft-NC and Soft-NS of one ranking: ``samples`` Bernoulli masks on the context's embedding elements each."""
    w = (scores.float() - scores.min()) / (scores.max() - scores.min()).clamp_min(1e-12)
    e = problem.embed(problem.ids[None]).detach()  # [1, P, d]
    a, b, d = problem.ctx_start, problem.ctx_end, e.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    keep = torch.cat([1 - w, w])[:, None]  # Soft-NC's samples, then Soft-NS's: per token, per element
    draws = [torch.rand(2 * problem.n_context, d, generator=gen) < keep for _ in range(samples)]
    masks = torch.stack([torch.stack([m[: b - a] for m in draws]), torch.stack([m[b - a :] for m in draws])])
    masks = torch.cat([masks.flatten(0, 1), torch.zeros(1, b - a, d, dtype=torch.bool)])  # + the empty context
    out = []
    for i in range(0, masks.shape[0], batch):
        x = e.expand(min(batch, masks.shape[0] - i), -1, -1).clone()
        x[:, a:b] = x[:, a:b] * masks[i : i + batch].to(x.device, x.dtype)
        out.append(problem.score_embeds(x).float().cpu())
    s = torch.cat(out)
    s0 = 1 - max(0.0, base - float(s[-1]))
    nc = ((base - s[:samples]).clamp_min(0) / max(1e-12, 1 - s0)).clamp(0, 1).mean()
    suff = 1 - (base - s[samples : 2 * samples]).clamp_min(0)
    ns = ((suff - s0) / max(1e-12, 1 - s0)).clamp(0, 1).mean()
    return {"soft_nc": float(nc), "soft_ns": float(ns)}


def random_rankings(n: int, n_random: int, seed: int) -> list[Tensor]:
    """The random reference: ``n_random`` uniform score vectors over ``n`` tokens from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=gen) for _ in range(n_random)]


MAIN = ("comprehensiveness", "sufficiency", "soft_nc", "soft_ns")


def evaluate(
    problem: Problem, rankings: dict[str, Tensor], n_random: int = 1, samples: int = 4, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Faithfulness figures per ranking, each with the random-ranking reference (mean and SD over ``n_random``
    draws), the ratio to it and the saturation of the top 1%."""
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    base = float(problem.score(problem.ids[None])[0])
    everything = torch.ones(1, problem.n_context, dtype=torch.bool)
    empty = float(problem.score(problem.replaced(everything))[0])
    span = base - empty
    draws = [
        {**aopc(problem, r, base), **soft(problem, r, base, samples, seed)}
        for r in random_rankings(problem.n_context, n_random, seed)
    ]
    ref = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
    sd = {k: float(np.std([d[k] for d in draws], ddof=1)) if n_random > 1 else float("nan") for k in draws[0]}
    sat_random = [d["comp@1"] / span if span > 0 else float("nan") for d in draws]
    out = {}
    for name, scores in rankings.items():
        row = {**aopc(problem, scores, base), **soft(problem, scores, base, samples, seed)}
        for key in draws[0]:
            row[f"{key}_random"] = ref[key]
        for key in (*MAIN, "comp@1"):
            row[f"{key}_random_sd"] = sd[key]
        for key in MAIN:
            row[f"{key}_ratio"] = row[key] / ref[key] if abs(ref[key]) > 1e-12 else float("nan")
        row["saturation@1"] = row["comp@1"] / span if span > 0 else float("nan")
        row["saturation@1_random"] = float(np.mean(sat_random))
        row.update(target=base, target_empty=empty, n_random=n_random, soft_version="embedding")
        out[name] = row
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(x, kind="stable")
    _, start, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(start + (counts - 1) / 2, counts)
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    ra, rb = _ranks(a.numpy().astype(float)), _ranks(b.numpy().astype(float))
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall(a: Tensor, b: Tensor, chunk: int = 256) -> float:
    """Kendall's tau-b, exact, over all pairs in row chunks (no n x n matrix)."""
    x, y = a.double(), b.double()
    conc = tx = ty = 0.0
    n = x.numel()
    for s in range(0, n, chunk):
        dx = torch.sign(x[s : s + chunk, None] - x[None])
        dy = torch.sign(y[s : s + chunk, None] - y[None])
        conc += float((dx * dy).sum())
        tx += float((dx != 0).sum())
        ty += float((dy != 0).sum())
    return conc / float(np.sqrt(tx * ty)) if tx and ty else float("nan")


def agreement(rankings: dict[str, Tensor]) -> list[dict[str, float | str]]:
    names = list(rankings)
    rows: list[dict[str, float | str]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "spearman": spearman(rankings[a], rankings[b]),
                    "kendall": kendall(rankings[a], rankings[b]),
                }
            )
    return rows


def needle_recall(scores: Tensor, needle: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Fraction of the needle's tokens (bool ``needle [n]``) among the top ``k%`` tokens, and whether the
    top-ranked token is a needle token."""
    masks = top_masks(scores, ks)
    hits = max(1, int(needle.sum()))
    out = {f"needle_recall@{k}": float((m & needle).sum() / hits) for k, m in zip(ks, masks, strict=True)}
    out["needle_top1"] = float(needle[int(scores.argmax())])
    return out


def needle_mask(context: str, offsets: list[tuple[int, int]], texts: list[str]) -> Tensor:
    """Bool ``[n]``: the context tokens that overlap any occurrence of any of ``texts`` (the needles)."""
    spans = []
    for t in texts:
        at = context.find(t)
        while at >= 0:
            spans.append((at, at + len(t)))
            at = context.find(t, at + 1)
    return torch.tensor([any(a < e and b > s for s, e in spans) for a, b in offsets], dtype=torch.bool)
