"""One score per cell from every layer's and head's scores: llama.cpp's cells are shared by all layers and heads,
so one set of kept cells serves them all. Input ``{layer: [n_head, n_cells]}``; output ``[n_cells]`` (higher =
keep). ``skip`` drops the first ``skip`` layers (``skip_first``) before any aggregate; a cell scored +inf by any
head (a method's "always keep") stays +inf.

- ``layermax``: each layer's max over its heads (KVzip's own per-layer reduction), then the mean over layers: a
  cell must matter in many layers, so one copy head in one layer cannot make every cell look essential;
- ``max``: the most any head gives the cell (KVzip's own reduction, extended over layers);
- ``mean``: the average over layers and heads;
- ``vote``: one global top-k over every (layer, head, cell) score, ``k = budget x heads``, turned into a per-cell
  count of the entries it won (what the HF path's ``scope="global"`` spends); ties by ``mean``;
- ``norm``: every head's scores divided by that head's sum (each head a distribution over the cells), then the
  mean: a head that scores every cell high (KVzip's copy heads do) counts for as much as one that picks a few;
- ``union``: the union of every head's top-k at the largest equal ``k`` that fits the budget, i.e. the cell's
  best rank in any head (lower = kept first), ties by ``norm``: the shared analogue of a per-head budget;
- ``wvote``: each head votes for its top-``budget`` cells with weight = the share of its score mass those cells
  hold (a concentrated head votes near 1, a flat one near ``budget / n``); ties by ``norm``.

Default (:data:`DEFAULT`): ``layermax``, chosen on VALIDATION samples only (niah_single, prose haystack, seed 1,
question unseen, SmolLM2 at 2k; the reported grid uses seed 0) by ``benchmarks/llamacpp_kv/choose_aggregate.py``
and its saved per-layer scores: at keep 0.25 it kept every answer token in 3 of 4 samples (top-k of the
saved scores, no protected cells), where the full selection kept them all with ``max`` in 0 of 4 (mean share
0.75), ``mean`` / ``norm`` 2 of 4, ``union`` / ``vote`` / ``wvote`` 1 of 4; see ``summary.md``. ``max``
flattens because KVzip's reconstruction gives every context token a near-1 score in some copy head; ``norm``
and ``wvote`` over-weight heads that are sharp on the wrong cells. The validation is small (n=4-5, the machine
was shared): the others stay selectable (``aggregate_by=``, ``--aggregate``).
"""

from __future__ import annotations

import numpy as np

from tokensieve.errors import ParameterError, check_choice

AGGREGATES = ("layermax", "max", "mean", "vote", "norm", "union", "wvote")
DEFAULT = "layermax"
EPS = 1e-30


def stacked(layers: dict[int, np.ndarray], skip: int = 0) -> np.ndarray:
    """``[layers x heads, n]`` float64, the first ``skip`` layers (by index) left out."""
    keys = sorted(layers)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ParameterError(f"skip_first {skip!r} must be a whole number of layers >= 0")
    kept = keys[skip:] if skip < len(keys) else []
    if not kept:
        raise ParameterError(f"skip_first={skip} leaves none of the {len(keys)} layers read to score with")
    return np.concatenate([np.asarray(layers[i], dtype=np.float64).reshape(-1, layers[i].shape[-1]) for i in kept])


def per_head_norm(s: np.ndarray) -> np.ndarray:
    """Each row (one head) divided by its sum: ``[heads, n]``."""
    return s / (s.sum(axis=1, keepdims=True) + EPS)


def tiebreak(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Each cell's place (0 = last) in the order by ``primary``, ties by ``secondary``: whole numbers, so the
    order survives the float32 the selection works in."""
    out = np.empty(primary.shape[0])
    out[np.lexsort((secondary, primary))] = np.arange(primary.shape[0])
    return out


def best_rank(s: np.ndarray) -> np.ndarray:
    """Per cell, its best (lowest) 0-based rank in any head; within a head, ties ranked by cell index."""
    order = np.argsort(-s, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(s.shape[0])[:, None]
    ranks[rows, order] = np.arange(s.shape[1])[None, :]
    return ranks.min(axis=0)


def aggregate(layers: dict[int, np.ndarray], how: str = DEFAULT, budget: int = 1, skip: int = 0) -> np.ndarray:
    check_choice("aggregate", how, AGGREGATES)
    s = stacked(layers, skip)
    forced = np.isposinf(s).any(axis=0)  # a method's "always keep" (lagkv's tail without a reference chunk)
    s = np.where(np.isposinf(s), 0.0, s)
    heads, n = s.shape
    k = max(1, min(int(budget), n))
    if how == "layermax":
        n_layers = len(sorted(layers)[skip:])
        out = s.reshape(n_layers, -1, n).max(axis=1).mean(axis=0)
    elif how == "max":
        out = s.max(axis=0)
    elif how == "mean":
        out = s.mean(axis=0)
    elif how == "norm":
        out = per_head_norm(s).mean(axis=0)
    elif how == "vote":
        top = np.argpartition(s.ravel(), s.size - k * heads)[s.size - k * heads :]
        out = tiebreak(np.bincount(top % n, minlength=n).astype(np.float64), s.mean(axis=0))
    elif how == "union":
        out = tiebreak(-best_rank(s).astype(np.float64), per_head_norm(s).mean(axis=0))
    else:  # wvote
        p = per_head_norm(s)
        top = np.argpartition(p, n - k, axis=1)[:, n - k :]  # [heads, k]
        w = np.take_along_axis(p, top, axis=1).sum(axis=1)  # mass share of each head's top-k
        votes = np.zeros(n)
        np.add.at(votes, top.ravel(), np.repeat(w, k))
        out = tiebreak(votes, p.mean(axis=0))
    return np.where(forced, np.inf, out).astype(np.float64)


__all__ = ["AGGREGATES", "DEFAULT", "aggregate", "best_rank", "per_head_norm", "stacked"]
