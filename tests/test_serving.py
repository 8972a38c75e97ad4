"""The serving simulator: memory is conserved and the pool never exceeded at any step, pages follow the
page-eviction rule of act.pages, compression fits more requests at equal memory, and bad input errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensieve.kv import Plan
from tokensieve.kv.pages import Paging, choose_pages
from tokensieve.serving import Policy, QualityTable, Request, SimulatorError, poisson_requests, simulate


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 1000),
    keep=st.sampled_from([None, 0.5, 0.25, 0.1]),
    page=st.sampled_from([1, 8, 16, 32]),
    peak=st.sampled_from(["all", "layer"]),
    rate=st.floats(0.05, 2.0),
)
def test_memory_is_conserved_and_the_pool_never_exceeded(seed, keep, page, peak, rate):
    reqs = poisson_requests(30, rate, [100, 300, 1000], (1, 60), seed)
    policy = Policy("m", keep, page, peak)
    pool = max(policy.peak_pages(r, 3) for r in reqs) + 40
    out = simulate(reqs, policy, pool, layers=3, steps=400)
    for rec in out.trace:
        assert rec.free + rec.held + rec.reserved == pool
        assert 0 <= rec.held <= rec.held + rec.reserved <= rec.top <= pool and rec.free >= 0
    if out.trace and out.trace[-1].running == 0 and out.trace[-1].queued == 0:
        assert out.trace[-1].free == pool  # everything given back


def test_pages_held_step_by_step():
    # 40 tokens, pages of 16, keep 0.5 -> budget 20 -> 1 page: the tail page (8 tokens) being filled
    policy = Policy("m", 0.5, 16)
    assert (policy.prompt_pages(40), policy.kept_pages(40), policy.tail_fill(40)) == (3, 1, 8)
    out = simulate([Request(0, 0, 40, 10)], policy, pool=100, layers=2, steps=12)
    held = [r.held for r in out.trace]
    assert held[:8] == [2] * 8  # tokens 41..48 fill the tail page
    assert held[8] == 4 and held[9] == 0  # token 49 opens a page; done after 10 tokens, everything given back
    assert out.trace[0].top == 2 * 3 and out.trace[0].reserved == 2  # the prefill's peak, then one spare page
    assert out.pages_freed == 2 * (3 - 1)
    assert out.finished == [(Request(0, 0, 40, 10), 0, 9)]
    assert policy.peak_pages(Request(0, 0, 40, 10), 2) == 2 * 3  # the prefill (whole prompt) is the peak
    assert Policy("m", 0.5, 16, "layer").peak_pages(Request(0, 0, 40, 10), 2) == 3 + 1  # one full layer + one kept


@pytest.mark.parametrize("context", [37, 64, 100, 1000])
@pytest.mark.parametrize("keep", [0.5, 0.25, 0.1])
@pytest.mark.parametrize("page", [1, 8, 16, 32])
def test_kept_pages_follow_the_page_eviction_rule(context, keep, page):
    budget = Plan.make("snapkv", keep=keep).mean_budget(context)
    c = choose_pages(torch.randn(1, 2, context), budget, None, 0, 0, Paging(page))
    assert int(c.kept.sum()) == Policy("m", keep, page).kept_pages(context)


def test_compression_fits_more_requests_at_equal_memory():
    reqs = [Request(i, 0, 2048, 64) for i in range(12)]
    full = simulate(reqs, Policy("full", None, 16), pool=4 * 30 * 132, layers=30, steps=100)
    small = simulate(reqs, Policy("snapkv", 0.25, 16), pool=4 * 30 * 132, layers=30, steps=100)
    assert full.max_running == 4 and small.max_running == 12  # 4 x 132 pages vs 12 x (32 + 4), the prefill peak fits
    assert small.pages_freed > 0 == full.pages_freed


def test_bad_input():
    with pytest.raises(SimulatorError, match="more than the whole pool"):
        simulate([Request(0, 0, 1000, 10)], Policy(), pool=10, layers=2, steps=5)
    with pytest.raises(SimulatorError, match="keep"):
        Policy("m", 1.5)


def test_quality_from_bench_cells(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [
        {"type": "cell", "kind": "fidelity", "method": "snapkv:pages=16", "keep": 0.25, "length": n, "score": s}
        for n, s in [(1024, 0.8), (1024, 0.9), (2048, 0.7)]
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    q = QualityTable.from_bench(path)
    mean, half, n = q.lookup("snapkv:pages=16", 0.25, 1200)
    assert (round(mean, 6), n) == (0.85, 2) and half > 0
    assert q.lookup("snapkv:pages=16", 0.25, 4000)[0] == 0.7 and q.lookup("x", None, 10) == (1.0, 0.0, 0)
    with pytest.raises(SimulatorError, match="no bench cells"):
        q.lookup("snapkv", 0.1, 1024)
