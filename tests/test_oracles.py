"""Independent oracles for rules a mutation probe found unguarded: every expected value here is computed by hand
or from first principles (never through the helper under test), on tensors small enough to reason about.
``benchmarks/mutations/`` keeps the mutations; each of these tests fails under its own."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model
from tokensieve.compat import mark_initialized, with_cache
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.attention import gumbel_noise
from tokensieve.kv import SieveLayer, SparseCache, get_method
from tokensieve.kv.budget import AdaKV, Pyramid
from tokensieve.kv.budget.adakv import head_distributions
from tokensieve.kv.evicting.layer import EvictingLayer
from tokensieve.kv.evicting.rules import AboveUniformHistory, DecodeRule, LastQuery, Step
from tokensieve.kv.sparse.base import Selection, SparseMethod


def _fill(layer: SieveLayer, t: int, h: int = 2, d: int = 32, seed: int = 0) -> SieveLayer:
    """Hold ``t`` random tokens, set directly (an ``update`` outside a forward would leave the layer bound)."""
    g = torch.Generator().manual_seed(seed)
    layer.keys, layer.values = torch.randn(1, h, t, d, generator=g), torch.randn(1, h, t, d, generator=g)
    layer.cumulative_length = t
    mark_initialized(layer, layer.keys)
    return layer


def _layer(t: int) -> SieveLayer:
    return _fill(SieveLayer(0), t)


def _step(probs: torch.Tensor, n_visible: float) -> Step:
    b, h, _, q, s = probs.shape
    return Step(
        probs=probs,
        logits=probs.log(),
        real=torch.ones(b, q),
        rows=torch.arange(s - q, s),
        positions=torch.arange(s).expand(b, h, s),
        n_visible=torch.full((b, 1, 1, q, 1), n_visible),
        prompt_len=s - q,
    )


# --- MiKV: the highest-ranked tokens are the full-precision ones --------------------------------------------
def test_mikv_keeps_the_highest_scores_in_full_precision():
    t, budget = 24, 8
    layer = _layer(t)
    scores = torch.tensor([[(7 * j) % t for j in range(t)], [(11 * j + 3) % t for j in range(t)]]).float()[None]
    m = get_method("mikv")
    m.score = lambda x: scores  # the importance is given, so the expected set follows by hand
    sinks, window = m.protected(budget)
    out = m.act(layer, ScoreInputs(layer.keys, layer.values, None, None), budget, None, inplace=False)
    for h in range(2):
        middle = [j for j in range(sinks, t - window)]
        best = sorted(middle, key=lambda j: -float(scores[0, h, j]))[: budget - sinks - window]
        want = sorted([*range(sinks), *best, *range(t - window, t)])
        held = out.token_index[0, h].tolist()
        assert sorted(held) == want
        for slot, pos in enumerate(held):  # full precision: the very same key, bit for bit
            assert torch.equal(out.keys[0, h, slot], layer.keys[0, h, pos])


# --- decode eviction: the lowest score goes -----------------------------------------------------------------
class _Given(DecodeRule):
    """A rule whose score is whatever the state holds (the test writes it)."""

    def needs(self):  # pragma: no cover - not used
        raise NotImplementedError

    def init(self, x):  # pragma: no cover
        raise NotImplementedError

    def update(self, state, step):  # pragma: no cover
        raise NotImplementedError

    def score(self, state):
        return state["s"]


def test_decode_eviction_keeps_the_highest_scores():
    t, budget = 10, 4
    layer = _fill(EvictingLayer(0, _Given(), budget, sinks=1, window=1), t)
    s = torch.tensor([[[9.0, 1, 8, 2, 7, 3, 0, 4, 6, 5], [0.0, 9, 1, 8, 2, 7, 3, 6, 4, 5]]])
    idx = layer._choose({"s": s})
    # sink 0 and the last slot are protected; then the two best of the rest per head
    assert sorted(idx[0, 0].tolist()) == [0, 2, 4, 9]
    assert sorted(idx[0, 1].tolist()) == [0, 1, 3, 9]


# --- TOVA: the last new query decides ------------------------------------------------------------------------
def test_tova_decode_rule_reads_the_last_query():
    first = torch.tensor([0.7, 0.1, 0.1, 0.1])
    last = torch.tensor([0.1, 0.1, 0.1, 0.7])
    probs = torch.stack([first, last]).view(1, 1, 1, 2, 4).expand(1, 2, 2, 2, 4)
    got = LastQuery().update({}, _step(probs, 4))["last"]
    assert torch.allclose(got[0, 0], last)


# --- Keyformer: the noise is standard Gumbel (mean = Euler's constant, P(X <= 0) = 1/e) ----------------------
def test_gumbel_noise_is_standard_gumbel():
    noise = gumbel_noise(0, 4, torch.arange(0, 256), 256)[0]
    noise = noise[:, torch.ones(256, 256, dtype=torch.bool).tril()].flatten()  # the keys each row can see
    euler = 0.5772156649
    assert abs(float(noise.mean()) - euler) < 0.01
    assert abs(float((noise <= 0).float().mean()) - math.exp(-1)) < 0.01
    assert float(noise.max()) > 5 and float(noise.min()) > -3.5  # right-skewed: a long tail above, none below


# --- AdaKV: scores shifted to >= 0 per head before normalising ---------------------------------------------
def test_adakv_head_distributions_shift_then_normalise():
    scores = torch.tensor([[[5.0, 6.0, 7.0]]])
    got = head_distributions(scores, torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(got, torch.tensor([[[0.0, 1 / 3, 2 / 3]]]))


def test_adakv_head_budgets_by_hand():
    # head 0 is flat but for one token (offset by 100, which the shift removes); head 1 spreads evenly
    scores = torch.tensor([[[100.0, 100.0, 100.0, 101.0], [1.0, 2.0, 3.0, 4.0]]])
    counts = AdaKV(floor=0.0).head_budgets(scores, 2, None, 0, 0)
    # distributions: head 0 [0, 0, 0, 1], head 1 [0, 1, 2, 3] / 6: the top 4 of both are 1 of head 0 and 3 of head 1
    assert counts.tolist() == [[1, 3]]


# --- PyramidKV: budgets fall linearly from 2b - b/beta at the bottom to b/beta at the top ---------------------
def test_pyramid_budgets_follow_their_slope():
    got = Pyramid(beta=20).layer_budgets(100, 5, 10_000)
    want = [195, 147.5, 100, 52.5, 5]
    assert sum(got) == 500 and all(abs(g - w) <= 0.5 for g, w in zip(got, want, strict=True))
    flat = Pyramid(beta=1).layer_budgets(100, 5, 10_000)  # beta 1: top = bottom = the mean
    assert flat == [100] * 5


# --- Scissorhands: strictly above the uniform level counts; exactly at it does not -------------------------
def test_scissorhands_counts_strictly_above_uniform():
    uniform = torch.full((1, 2, 2, 1, 4), 0.25)  # n_visible 4: every slot exactly at 1/4
    state = {"count": torch.zeros(1, 2, 4, dtype=torch.int32)}
    got = AboveUniformHistory(history=None).update(state, _step(uniform, 4))["count"]
    assert int(got.sum()) == 0
    peaked = torch.tensor([0.5, 0.25, 0.125, 0.125]).view(1, 1, 1, 1, 4).expand(1, 2, 2, 1, 4)
    got = AboveUniformHistory(history=None).update(state, _step(peaked, 4))["count"]
    assert got[0].tolist() == [[2, 0, 0, 0], [2, 0, 0, 0]]  # slot 0, by both heads of each group


# --- sparse decoding: the first `sinks` and the last `window` slots are always read --------------------------
class _EdgesLast(SparseMethod):
    """Scores that rank the edges of the cache lowest, so only protection can bring them into the read set."""

    id = "test_edges_last"
    paper = rule = "test"

    def select(self, x):
        s = x.keys.shape[2]
        pos = torch.arange(s, dtype=torch.float32)
        return Selection(scores=-(pos - s / 2).abs().view(1, 1, s), scoring_read=0.0)


@pytest.mark.parametrize("sinks, window", [(1, 4), (4, 1)])
def test_sparse_layer_reads_its_sinks_and_window(sinks, window):
    model = make_model("llama")
    cache = SparseCache(model, _EdgesLast(sinks=sinks, window=window), read=16)
    seen: list[tuple[int, set[int]]] = []
    for layer in cache.sparse_layers:
        layer.on_select = lambda lyr, idx: seen.append((lyr.n_held, set(idx[0, 0].tolist())))
    prompt = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model.generate(prompt, **with_cache(model, cache), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert seen
    for n, read in seen:
        assert set(range(sinks)) <= read and set(range(n - window, n)) <= read
        assert not ({sinks, n - window - 1} & read)  # an edge slot beyond the protected ones is never read
