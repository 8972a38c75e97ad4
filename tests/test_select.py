"""Selection (protected tokens, padding, ties) and budget allocators."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensieve.core.ops.select import protection_mask, select
from tokensieve.errors import UnknownMethodError
from tokensieve.kv import get_method
from tokensieve.kv.budget import Pyramid, Uniform, get_allocator


def test_protected_tokens_always_win_and_padding_always_loses():
    scores = torch.tensor([[[9.0, 9, 9, 1, 1, 1, 0, 0, 5, 0]]])
    valid = torch.tensor([[False, False, True, True, True, True, True, True, True, True]])
    idx = select(scores, 5, valid, sinks=1, window=2)
    # sinks: index 2 (first real); window: 8, 9; then the best remaining: 3, 4, 5 tie at 1 -> later wins
    assert idx.tolist() == [[[2, 4, 5, 8, 9]]]


def test_short_rows_keep_everything_real_and_pad_the_rest():
    scores = torch.rand(2, 3, 6)
    valid = torch.tensor([[True] * 6, [False, False, False, True, True, True]])
    idx = select(scores, 4, valid)
    assert all(set(range(3, 6)) <= set(row.tolist()) for row in idx[1])  # all 3 real tokens kept
    kept_valid = valid[1][idx[1, 0]]
    assert kept_valid.tolist() == [False, True, True, True]  # padding sorts first in every head
    assert torch.equal(valid[1][idx[1]], kept_valid.expand(3, 4))


def test_protection_mask_counts_real_tokens_only():
    valid = torch.tensor([[False, True, True, True, True, True]])
    assert protection_mask(valid, 1, 6, 2, 1).tolist() == [[False, True, True, False, False, True]]


@settings(max_examples=60, deadline=None)
@given(t=st.integers(2, 60), budget=st.integers(1, 60), sinks=st.integers(0, 8), window=st.integers(0, 30))
def test_select_returns_sorted_unique_indices_of_the_budget(t, budget, sinks, window):
    budget = min(budget, t)
    idx = select(torch.randn(2, 2, t), budget, None, *get_method("h2o", sinks=sinks, window=window).protected(budget))
    assert idx.shape == (2, 2, budget)
    assert torch.equal(idx, idx.sort(-1).values) and all(len(set(r.tolist())) == budget for r in idx.view(-1, budget))


def test_window_shrinks_to_fit_the_budget():
    m = get_method("streaming", sinks=4, window=100)
    assert m.protected(10) == (4, 6)
    assert m.protected(3) == (3, 0)
    assert get_method("h2o").protected(64) == (0, 32)  # window=0.5 is half the budget


@pytest.mark.parametrize("budget,n_layers,n_tokens", [(100, 30, 1000), (7, 5, 50), (40, 4, 45), (1, 3, 10)])
def test_pyramid_falls_and_averages_the_budget(budget, n_layers, n_tokens):
    b = Pyramid().layer_budgets(budget, n_layers, n_tokens)
    assert len(b) == n_layers and all(1 <= x <= n_tokens for x in b)
    assert b == sorted(b, reverse=True)
    assert sum(b) == min(budget * n_layers, n_tokens * n_layers)


def test_uniform_and_unknown_allocator():
    assert Uniform().layer_budgets(10, 3, 100) == [10, 10, 10]
    with pytest.raises(UnknownMethodError, match="uniform, pyramid"):
        get_allocator("staircase")
