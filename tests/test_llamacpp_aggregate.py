"""The shared-selection aggregates of the llama.cpp engine against direct per-cell formulas on small tensors
(loops over cells and heads; none of the implementation's helpers)."""

from __future__ import annotations

import os

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("llama_cpp")

from tokensieve.engines.llamacpp import AGGREGATES, DEFAULT, aggregate
from tokensieve.errors import ParameterError

pytestmark = pytest.mark.llamacpp


def layers(seed: int = 0, n_layers: int = 3, heads: int = 4, n: int = 12) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.random((heads, n)).astype(np.float32) for i in range(n_layers)}


def rows(ls: dict[int, np.ndarray], skip: int = 0) -> list[list[float]]:
    return [[float(x) for x in h] for i in sorted(ls)[skip:] for h in ls[i]]


def order(scores) -> list[int]:
    """Cells from most to least kept (stable: equal scores by index)."""
    return sorted(range(len(scores)), key=lambda c: -scores[c])


def test_max_mean_norm_match_direct_formulas():
    ls = layers()
    r = rows(ls)
    n = len(r[0])
    want_max = [max(h[c] for h in r) for c in range(n)]
    want_mean = [sum(h[c] for h in r) / len(r) for c in range(n)]
    want_norm = [sum(h[c] / sum(h) for h in r) / len(r) for c in range(n)]
    np.testing.assert_allclose(aggregate(ls, "max", 3), want_max, rtol=1e-6)
    per_layer = [[max(float(h[c]) for h in ls[i]) for c in range(n)] for i in sorted(ls)]
    want_layermax = [sum(pl[c] for pl in per_layer) / len(per_layer) for c in range(n)]
    np.testing.assert_allclose(aggregate(ls, "layermax", 3), want_layermax, rtol=1e-6)
    np.testing.assert_allclose(aggregate(ls, "mean", 3), want_mean, rtol=1e-6)
    np.testing.assert_allclose(aggregate(ls, "norm", 3), want_norm, rtol=1e-6)
    # skip_first leaves the first layers out
    r2 = rows(ls, 2)
    np.testing.assert_allclose(aggregate(ls, "mean", 3, skip=2), [sum(h[c] for h in r2) / len(r2) for c in range(n)],
                               rtol=1e-6)  # fmt: skip


def test_norm_lets_a_selective_head_outvote_flat_copy_heads():
    n = 10
    flat = np.full((3, n), 0.9, dtype=np.float32)  # copy heads: every cell near 1
    flat[:, 7] = 0.95  # a cell the flat heads like slightly more
    sharp = np.full((1, n), 0.01, dtype=np.float32)
    sharp[0, 2] = 0.9  # one head that picks cell 2
    ls = {0: np.concatenate([flat, sharp])}
    assert order(aggregate(ls, "max", 1))[0] == 7
    assert order(aggregate(ls, "norm", 1))[0] == 2


def test_layermax_needs_a_cell_to_matter_in_many_layers():
    n = 8
    copy = np.full((2, n), 0.1, dtype=np.float32)
    copy[0, 5] = 1.0  # one head of one layer gives cell 5 everything
    wide = np.full((2, n), 0.1, dtype=np.float32)
    wide[1, 3] = 0.6  # cell 3 matters moderately in every layer
    ls = {0: copy.copy(), 1: wide.copy(), 2: wide.copy()}
    ls[0][1, 3] = 0.6
    assert order(aggregate(ls, "max", 1))[0] == 5
    assert order(aggregate(ls, "layermax", 1))[0] == 3


def test_vote_counts_global_top_entries():
    ls = layers(1)
    r = rows(ls)
    n, budget = len(r[0]), 3
    entries = sorted(((h[c], c) for h in r for c in range(n)), reverse=True)[: budget * len(r)]
    votes = [sum(1 for _, c in entries if c == cell) for cell in range(n)]
    got = aggregate(ls, "vote", budget)
    for a in range(n):
        for b in range(n):
            if votes[a] > votes[b]:
                assert got[a] > got[b]


def test_union_is_best_rank_in_any_head():
    ls = layers(2)
    r = rows(ls)
    n = len(r[0])
    best = []
    for c in range(n):
        best.append(min(sum(1 for x in h if x > h[c]) for h in r))  # rank of c in each head (no ties here)
    got = aggregate(ls, "union", 4)
    for a in range(n):
        for b in range(n):
            if best[a] < best[b]:
                assert got[a] > got[b]
    # the union of every head's top-k at the largest k that fits a budget is what the top-|union| cells are
    for k in range(1, n):
        union = {c for h in r for c in sorted(range(n), key=lambda c, h=h: -h[c])[:k]}
        assert set(order(got)[: len(union)]) == union


def test_wvote_weights_each_heads_top_k_by_its_mass_share():
    ls = layers(3)
    r = rows(ls)
    n, budget = len(r[0]), 3
    votes = [0.0] * n
    for h in r:
        top = sorted(range(n), key=lambda c, h=h: -h[c])[:budget]
        w = sum(h[c] for c in top) / sum(h)
        for c in top:
            votes[c] += w
    got = aggregate(ls, "wvote", budget)
    for a in range(n):
        for b in range(n):
            if votes[a] > votes[b] + 1e-9:
                assert got[a] > got[b]


def test_every_aggregate_is_finite_and_checked():
    ls = layers(4)
    assert DEFAULT in AGGREGATES
    for how in AGGREGATES:
        out = aggregate(ls, how, 5)
        assert out.shape == (12,) and np.isfinite(out).all()
        assert len(set(order(out)[:5])) == 5
    with pytest.raises(ParameterError):
        aggregate(ls, "median", 5)
    with pytest.raises(ParameterError):
        aggregate(ls, "norm", 5, skip=3)  # skips every layer read
