"""Every method's rule against an oracle written from the full attention matrix (small tensors only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oracle import full_attention, group_mean
from tokensieve.core.observe.capture import Needs, observe, probe_rows
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.observe.stats import AboveUniform, AttnSum, GumbelSum
from tokensieve.core.ops.select import select
from tokensieve.core.scores.attention import gumbel_noise
from tokensieve.kv import get_method

B, H, HKV, T, D = 2, 4, 2, 40, 8
SCALE = D**-0.5


@pytest.fixture(params=["nopad", "leftpad"])
def data(request):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, T, D, generator=g) * 2
    k = torch.randn(B, HKV, T, D, generator=g) * 2
    v = torch.randn(B, HKV, T, D, generator=g)
    valid = None
    if request.param == "leftpad":
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[1, :7] = False
    return q, k, v, valid


def inputs(method, q, k, v, valid, chunk_bytes=1 << 30):
    needs = method.needs()
    obs = observe(needs, q, k, valid, SCALE, max_chunk_bytes=chunk_bytes)
    return ScoreInputs(k, v, valid, obs)


def real_rows(valid):
    return torch.ones(B, T) if valid is None else valid.float()


# --- all-query column stats -------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 2000, 1 << 30])  # one row per chunk, a few rows, everything
def test_column_stats_equal_full_matrix(data, chunk_bytes):
    q, k, _, valid = data
    stats = [AttnSum(), AttnSum(decay=0.5), AboveUniform(history=9), GumbelSum(tau=0.7, seed=3)]
    obs = observe(Needs(stats=frozenset(stats)), q, k, valid, SCALE, max_chunk_bytes=chunk_bytes)
    a = full_attention(q, k, valid, SCALE)  # [B, H, T, T]
    w = real_rows(valid)

    torch.testing.assert_close(obs.stats[AttnSum().key], group_mean(torch.einsum("bhij,bi->bhj", a, w), HKV))

    decay = 0.5 ** (T - 1 - torch.arange(T)).double()
    expect = torch.einsum("bhij,bi->bhj", a, w * decay.float())
    torch.testing.assert_close(obs.stats[AttnSum(decay=0.5).key], group_mean(expect, HKV))

    n_visible = (a > 0).sum(-1, keepdim=True).clamp(min=1)
    above = (a * n_visible > 1).float()
    hist = (torch.arange(T) >= T - 9).float()
    torch.testing.assert_close(
        obs.stats[AboveUniform(history=9).key], group_mean(torch.einsum("bhij,bi->bhj", above, w * hist), HKV)
    )

    noise = gumbel_noise(3, 1, torch.arange(T), T)[0]  # [1, T, T], shared by the heads
    kk = k.repeat_interleave(H // HKV, 1)
    logits = (q @ kk.transpose(-1, -2)) * SCALE
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]
    noisy = torch.softmax(((logits + noise) / 0.7).masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(
        obs.stats[GumbelSum(tau=0.7, seed=3).key], group_mean(torch.einsum("bhij,bi->bhj", noisy, w), HKV)
    )


def test_gumbel_noise_does_not_depend_on_chunking():
    whole = gumbel_noise(5, 3, torch.arange(0, 200), 200)
    parts = [gumbel_noise(5, 3, torch.arange(lo, min(200, lo + 37)), 200) for lo in range(0, 200, 37)]
    assert torch.equal(whole, torch.cat(parts, 2))
    assert not torch.equal(whole, gumbel_noise(6, 3, torch.arange(0, 200), 200))


# --- methods ------------------------------------------------------------------------------------


def test_h2o_is_accumulated_attention(data):
    q, k, v, valid = data
    s = get_method("h2o").score(inputs(get_method("h2o"), q, k, v, valid))
    a = full_attention(q, k, valid, SCALE)
    torch.testing.assert_close(s, group_mean(torch.einsum("bhij,bi->bhj", a, real_rows(valid)), HKV))


def test_a2sf_with_no_forgetting_equals_h2o(data):
    q, k, v, valid = data
    h2o = get_method("h2o").score(inputs(get_method("h2o"), q, k, v, valid))
    a2sf = get_method("a2sf", decay=1.0)
    assert torch.equal(a2sf.score(inputs(a2sf, q, k, v, valid)), h2o)


def test_a2sf_is_the_forgetting_scan(data):
    q, k, v, valid = data
    m = get_method("a2sf", decay=0.3)
    s = m.score(inputs(m, q, k, v, valid, chunk_bytes=3000))
    a = full_attention(q, k, valid, SCALE)
    state = torch.zeros(B, H, T)
    for t in range(T):  # s_t = lambda * s_{t-1} + A[t]
        state = 0.3 * state + a[:, :, t] * real_rows(valid)[:, t, None, None]
    torch.testing.assert_close(s, group_mean(state, HKV))


def test_scissorhands_counts_above_uniform(data):
    q, k, v, valid = data
    m = get_method("scissorhands", history=12)
    s = m.score(inputs(m, q, k, v, valid))
    a = full_attention(q, k, valid, SCALE)
    n_visible = (a > 0).sum(-1, keepdim=True)
    counts = ((a * n_visible > 1).float() * real_rows(valid)[:, None, :, None])[:, :, T - 12 :].sum(2)
    torch.testing.assert_close(s, group_mean(counts, HKV))


def test_keyformer_is_gumbel_softmax_accumulation(data):
    q, k, v, valid = data
    m = get_method("keyformer", tau=1.5, seed=7)
    chunked = m.score(inputs(m, q, k, v, valid, chunk_bytes=2500))
    whole = m.score(inputs(m, q, k, v, valid))
    torch.testing.assert_close(chunked, whole)
    other = get_method("keyformer", tau=1.5, seed=8)
    assert not torch.allclose(other.score(inputs(other, q, k, v, valid)), whole)


def test_snapkv_pools_window_attention_and_keeps_window(data):
    q, k, v, valid = data
    m = get_method("snapkv", window=6, kernel=5)
    s = m.score(inputs(m, q, k, v, valid))
    a = full_attention(q, k, valid, SCALE)[:, :, T - 6 :].sum(2)  # [B, H, T]
    expect = F.max_pool1d(group_mean(a, HKV).reshape(B * HKV, 1, T), 5, stride=1, padding=2).view(B, HKV, T)
    torch.testing.assert_close(s, expect)
    idx = select(s, 10, valid, *m.protected(10))
    for b in range(B):
        for h in range(HKV):
            assert set(range(T - 6, T)) <= set(idx[b, h].tolist())


def test_tova_uses_last_query_over_all_heads(data):
    q, k, v, valid = data
    m = get_method("tova")
    s = m.score(inputs(m, q, k, v, valid))
    a = full_attention(q, k, valid, SCALE)[:, :, -1].mean(1)  # [B, T]
    torch.testing.assert_close(s, a[:, None].expand(B, HKV, T))
    idx = select(s, 9, valid)
    assert torch.equal(idx[:, 0], idx[:, 1])  # one selection shared by every head


def test_knorm_is_negative_key_norm(data):
    q, k, v, valid = data
    m = get_method("knorm")
    torch.testing.assert_close(m.score(inputs(m, q, k, v, valid)), -k.norm(dim=-1))


def test_zipcache_normalises_by_queries_that_see_the_token(data):
    q, k, v, valid = data
    m = get_method("zipcache", recent=5, probes=0.3)
    x = inputs(m, q, k, v, valid)
    rows = x.obs.rows
    assert torch.equal(rows, torch.cat([probe_rows(T, 5, 0.3), torch.arange(T - 5, T)]))
    assert 0 < rows.numel() - 5 < T - 5  # some earlier rows are probes, not all
    a = full_attention(q, k, valid, SCALE)
    w = real_rows(valid)[:, rows]  # [B, n]
    summed = group_mean(torch.einsum("bhij,bi->bhj", a[:, :, rows], w), HKV)
    counts = torch.stack([(w[b, None, :] * (rows[None, :] >= torch.arange(T)[:, None])).sum(-1) for b in range(B)])
    torch.testing.assert_close(m.score(x), summed / counts.clamp(min=1)[:, None])


def test_ems_mixes_normalised_global_and_local(data):
    q, k, v, valid = data
    m = get_method("ems", local=6, alpha=0.3)
    a = full_attention(q, k, valid, SCALE)
    w = real_rows(valid)
    seen_by = torch.einsum("bi,ij->bj", w, torch.ones(T, T).tril())  # real rows i >= j
    glob = group_mean(torch.einsum("bhij,bi->bhj", a, w), HKV) / seen_by.clamp(min=1)[:, None]
    loc = group_mean(a[:, :, T - 6 :].sum(2), HKV)
    if valid is not None:
        glob, loc = glob * valid[:, None], loc * valid[:, None]
    expect = 0.3 * glob / glob.sum(-1, keepdim=True) + 0.7 * loc / loc.sum(-1, keepdim=True)
    torch.testing.assert_close(m.score(inputs(m, q, k, v, valid)), expect)


def test_streaming_keeps_exactly_sinks_and_window(data):
    q, k, v, valid = data
    m = get_method("streaming", sinks=3)
    idx = select(m.score(inputs(m, q, k, v, valid)), 10, valid, *m.protected(10))
    first = 0 if valid is None else 7
    assert idx[0, 0].tolist() == [0, 1, 2, *range(T - 7, T)]
    assert idx[1, 1].tolist() == [first, first + 1, first + 2, *range(T - 7, T)]


def test_random_is_seeded(data):
    q, k, v, valid = data
    a = get_method("random", seed=1).score(inputs(get_method("random"), q, k, v, valid))
    b = get_method("random", seed=1).score(inputs(get_method("random"), q, k, v, valid))
    c = get_method("random", seed=2).score(inputs(get_method("random"), q, k, v, valid))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zipcache_from_a_shared_observation_equals_its_own(data):
    """A prefill shared with methods that need a larger window and probe fraction captures a superset of
    rows; ZipCache must pick out exactly the rows its own prefill would have captured."""
    q, k, v, valid = data
    m = get_method("zipcache", recent=5, probes=0.3)
    own = inputs(m, q, k, v, valid)
    shared = ScoreInputs(k, v, valid, observe(Needs(window=9, probes=0.6), q, k, valid, SCALE))
    assert shared.obs.rows.numel() > own.obs.rows.numel()
    torch.testing.assert_close(m.score(shared), m.score(own))
