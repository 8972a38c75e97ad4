"""Page-granular eviction: whole pages kept or freed, P = 1 is token selection exactly, bytes = pages x page
bytes, decode eviction in pages, exactness with nothing removed, and the errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokensieve as ts
from conftest import make_model, twin
from tokensieve.compat import with_cache
from tokensieve.core.ops.memory import tensor_bytes
from tokensieve.core.ops.select import protection_mask, select
from tokensieve.errors import PageError
from tokensieve.kv import DecodeCache
from tokensieve.kv.pages import Paging, choose_pages, page_bytes, paged_kv_bytes, pages_held, select_pages


def rand_scores(seed: int, b: int, h: int, t: int) -> torch.Tensor:
    return torch.randn(b, h, t, generator=torch.Generator().manual_seed(seed))


def oracle_pages(scores, budget, size, layout, agg, sinks=0, window=0):
    """Brute force, batch 1, no padding: page scores by loops; protected / filling pages first."""
    _b, h, t = scores.shape
    n_pages = -(-t // size)
    protect = protection_mask(None, 1, t, sinks, window)[0]
    heads = [list(range(h))] if layout == "layer" else [[i] for i in range(h)]
    out = []
    for hs in heads:
        ranked = []
        for p in range(n_pages):
            vals = scores[0, hs, p * size : (p + 1) * size].flatten()
            value = float(vals.max() if agg == "max" else vals.mean())
            guard = bool(protect[p * size : (p + 1) * size].any())
            value = float("inf") if guard else value  # protected pages tie, as protected tokens do
            filling = p == n_pages - 1 and t % size != 0
            ranked.append((filling, guard, value, p))
        ranked.sort(reverse=True)  # ties towards the later page
        keep = sorted(p for *_, p in ranked[: max(1, budget // size)])
        slots = [i for p in keep for i in range(p * size, min(t, (p + 1) * size))]
        out.extend([slots] * len(hs))
    return torch.tensor(out)[None]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    t=st.integers(1, 70),
    size=st.sampled_from([2, 4, 8, 16]),
    budget=st.integers(1, 70),
    layout=st.sampled_from(["layer", "head"]),
    agg=st.sampled_from(["max", "mean"]),
    sinks=st.integers(0, 4),
    window=st.integers(0, 8),
)
def test_pages_match_a_brute_force_oracle(seed, t, size, budget, layout, agg, sinks, window):
    scores = rand_scores(seed, 1, 3, t)
    got = select_pages(scores, budget, None, sinks, window, Paging(size, layout, agg))
    assert torch.equal(got, oracle_pages(scores, budget, size, layout, agg, sinks, window))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    budget=st.integers(1, 45),
    sinks=st.integers(0, 4),
    window=st.integers(0, 6),
    agg=st.sampled_from(["max", "mean"]),
)
def test_one_token_pages_are_token_selection_exactly(seed, lengths, budget, sinks, window, agg):
    t = max(lengths)
    valid = torch.tensor([[i >= t - n for i in range(t)] for n in lengths])  # left padding
    scores = rand_scores(seed, len(lengths), 2, t)
    scores[0, 1, 0] = float("nan")  # nan sorts with padding in both
    head = select_pages(scores, budget, valid, sinks, window, Paging(1, "head", agg))
    assert torch.equal(head, select(scores, budget, valid, sinks, window))
    pooled = scores.nan_to_num(nan=float("-inf"))
    pooled = pooled.amax(1, keepdim=True) if agg == "max" else pooled.mean(1, keepdim=True)
    layer = select_pages(scores, budget, valid, sinks, window, Paging(1, "layer", agg))
    assert torch.equal(layer, select(pooled, budget, valid, sinks, window).expand(-1, 2, -1))


def test_a_page_is_kept_or_freed_whole_and_the_choice_says_which():
    scores = rand_scores(3, 2, 4, 50)
    for layout in ("layer", "head"):
        c = choose_pages(scores, 28, None, 0, 0, Paging(8, layout, "mean"))  # 3 pages
        slots = c.slots
        assert slots.shape[-1] == 2 * 8 + 2  # two whole pages plus the page being filled (tokens 48, 49)
        pages = slots // 8
        for p in pages.unique():
            assert int((pages == p).sum(-1).max()) in (8, 2)  # every kept page is all there
        assert torch.equal(c.kept.sum(-1), torch.full(c.kept.shape[:2], 3))
        assert torch.equal(c.freed.sum(-1), torch.full(c.kept.shape[:2], 4))
        if layout == "layer":
            assert bool((slots == slots[:, :1]).all())  # every KV head keeps the same pages


def test_the_page_being_filled_outranks_protected_pages():
    scores = torch.zeros(1, 1, 18)
    got = select_pages(scores, 8, None, 8, 0, Paging(4, "layer", "max"))  # sinks cover pages 0, 1
    assert got.tolist() == [[[4, 5, 6, 7, 16, 17]]]  # the filling page 4, then page 1 (protected ties: later)


# --- prefill eviction on a model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return ts.prepare(make_model("llama"))


def ctx(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["layer", "head"])
def test_bytes_are_pages_times_page_bytes(llama, layout):
    c = ts.compress(llama, None, ctx(64), "snapkv", keep=0.25, pages=8, page_layout=layout)
    paging = Paging(8, layout)
    layers = c.cache.sieve_layers
    want = sum(int(pages_held(layer, paging).sum()) * page_bytes(layer, paging) for layer in layers)
    assert c.stats.kv_bytes == c.cache.kv_bytes() == want
    heads, dim = layers[0].keys.shape[1], layers[0].keys.shape[-1]
    per_page = 8 * 2 * dim * layers[0].keys.element_size() * (heads if layout == "layer" else 1)
    assert page_bytes(layers[0], paging) == per_page
    n_pages = 2 if layout == "layer" else 2 * heads  # 16 tokens = 2 pages per layer (per head)
    assert c.stats.kv_bytes == len(layers) * n_pages * per_page
    # 64 = 8 whole pages: what the engine holds is what the tensors hold
    assert c.stats.kv_bytes == tensor_bytes(t for layer in layers for t in (layer.keys, layer.values))
    assert c.stats.kv_bytes_full == 4 * c.stats.kv_bytes


def test_sliding_layers_count_their_tensors():
    model = ts.prepare(make_model("gemma3"))
    c = ts.compress(model, None, ctx(40), "snapkv", keep=0.5, pages=8, hybrid="full-only")  # windows whole
    paging = Paging(8)
    sieve = sum(int(pages_held(x, paging).sum()) * page_bytes(x, paging) for x in c.cache.sieve_layers)
    sliding = tensor_bytes(t for x in c.cache.layers if x not in c.cache.sieve_layers for t in (x.keys, x.values))
    assert sliding > 0 and c.cache.kv_bytes() == sieve + sliding


def test_partial_pages_count_whole(llama):
    c = ts.compress(llama, None, ctx(61), "snapkv", keep=0.4, pages=8)  # 24 tokens -> 2 pages + the 5-token tail
    for layer in c.cache.sieve_layers:
        assert layer.n_held == 2 * 8 + 5 and int(pages_held(layer, Paging(8)).max()) == 3
    tensors = tensor_bytes(t for layer in c.cache.sieve_layers for t in (layer.keys, layer.values))
    assert c.cache.kv_bytes() == tensors * 24 // 21


def test_one_token_pages_compress_like_tokens(llama):
    a = ts.compress(llama, None, ctx(48), "snapkv", keep=0.3, pages=1, page_layout="head")
    b = ts.compress(llama, None, ctx(48), "snapkv", keep=0.3)
    for x, y in zip(a.cache.sieve_layers, b.cache.sieve_layers, strict=True):
        assert torch.equal(x.token_index, y.token_index) and torch.equal(x.keys, y.keys)
    assert a.stats.kv_bytes == b.stats.kv_bytes
    q = torch.tensor([[5, 6, 7]])
    assert torch.equal(a.generate(q, max_new_tokens=4), b.generate(q, max_new_tokens=4))


def test_prefill_then_compress_in_pages(llama):
    pre = ts.prefill(llama, None, ctx(40), methods=["h2o"])
    c = pre.compress("h2o", keep=0.8, pages=16)  # 32 tokens = 2 pages, one of them the tail being filled
    assert [layer.n_held for layer in c.cache.sieve_layers] == [16 + 8] * 3  # one page + the 8-token tail
    assert c.stats.kv_bytes == paged_kv_bytes(c.cache, Paging(16))


def test_nothing_removed_is_the_plain_model_bit_for_bit():
    model = make_model("qwen2")
    ref = twin(model)
    ts.prepare(model)
    ids = ctx(30)
    c = ts.compress(model, None, ids, "snapkv", keep=1.0, pages=16)
    q = torch.tensor([[9, 10]])
    got = c.generate(q, max_new_tokens=5)
    with torch.inference_mode():
        want = ref.generate(torch.cat([ids, q], -1), max_new_tokens=5, do_sample=False)[:, 32:]
    assert torch.equal(got, want)


# --- decode-time eviction in pages ----------------------------------------------------------------


def run_decode(model, cache, n_prompt: int, steps: int):
    prompt = ctx(n_prompt, 7)
    with torch.inference_mode():
        out = model.generate(
            **with_cache(model, cache, input_ids=prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        )
    return out[:, n_prompt:]


@pytest.mark.parametrize("layout", ["layer", "head"])
def test_decode_eviction_holds_whole_pages(llama, layout):
    cache = DecodeCache(llama, "h2o", budget=24, pages=8, page_layout=layout, page_agg="mean")
    seen = []

    def check(layer):
        pos = layer.token_index if layer.token_index is not None else torch.arange(layer.n_held)[None, None]
        pages = pos // 8
        newest = int(pos.max()) // 8
        for p in pages.unique().tolist():
            if p != newest:
                assert int((pages == p).sum(-1).min()) == 8  # every held page but the one being filled is whole
        seen.append(int(pages_held(layer, Paging(8, layout)).max()))

    for layer in cache.evicting_layers:
        layer.on_step = check
    run_decode(llama, cache, 37, 20)
    assert max(seen) <= 3 and seen[-1] == 3  # at most budget // 8 pages after each forward
    assert cache.kv_bytes() == paged_kv_bytes(cache, Paging(8, layout))


def test_decode_in_one_token_pages_is_token_decode(llama):
    a = DecodeCache(llama, "tova", budget=20, pages=1, page_layout="head")
    b = DecodeCache(llama, "tova", budget=20)
    assert torch.equal(run_decode(llama, a, 30, 12), run_decode(llama, b, 30, 12))
    for x, y in zip(a.evicting_layers, b.evicting_layers, strict=True):
        assert torch.equal(x.token_index, y.token_index)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"pages": 0},
        {"pages": 2.5},
        {"pages": 8, "page_layout": "row"},
        {"pages": 8, "page_agg": "sum"},
        {"page_layout": "head"},
    ],
)
def test_bad_page_options(llama, kw):
    with pytest.raises(PageError):
        ts.compress(llama, None, ctx(20), "snapkv", keep=0.5, **kw)


def test_pages_refuse_what_one_page_table_cannot_hold(llama):
    with pytest.raises(PageError, match="merges"):
        ts.compress(llama, None, ctx(20), "ems", keep=0.5, pages=4)
    with pytest.raises(PageError, match="allocator"):
        ts.compress(llama, None, ctx(40), "snapkv", keep=0.5, allocator="adakv", pages=4)
    ts.compress(llama, None, ctx(20), "ems", keep=0.5, pages=4, merge=False)  # evicting only is fine


# --- the real model ----------------------------------------------------------------------------------


@pytest.mark.real
def test_real_model_in_pages(smollm2):
    """SmolLM2 on a 600-token pass-key prompt (question inside, SnapKV's setting), one prefill compressed three
    ways at keep 0.25: in pages of 16 every layer holds whole pages and bytes are pages x page bytes; one-token
    pages per head are token granularity exactly."""
    from tokensieve.runtime.passkey import passkey_context

    model, tok = smollm2
    task = passkey_context(tok, 600, 0.5, key="40507")
    fmt = ts.PromptFormat(tok)
    ids = fmt.context_ids(task.context) + fmt.question_ids(task.question, task.answer_prefix)
    pre = ts.prefill(model, tok, torch.tensor([ids[:-1]]), methods=["snapkv"])
    paged = pre.compress("snapkv", keep=0.25, pages=16)
    tokens = pre.compress("snapkv", keep=0.25)
    one = pre.compress("snapkv", keep=0.25, pages=1, page_layout="head")
    for x, y in zip(one.cache.sieve_layers, tokens.cache.sieve_layers, strict=True):
        assert torch.equal(x.token_index, y.token_index)
    assert one.stats.kv_bytes == tokens.stats.kv_bytes
    n, layers = pre.context_tokens, model.config.num_hidden_layers
    page = 16 * 2 * 64 * 4 * model.config.num_key_value_heads  # fp32 keys and values of every KV head
    assert paged.stats.kv_bytes == layers * max(1, round(0.25 * n) // 16) * page <= tokens.stats.kv_bytes
    for layer in paged.cache.sieve_layers:
        pos = layer.token_index // 16
        assert all(int((pos == p).sum(-1).min()) in (16, n % 16) for p in pos.unique().tolist())
    answer = tok.decode(paged.generate(torch.tensor([ids[-1:]]), max_new_tokens=8)[0], skip_special_tokens=True)
    assert answer.strip()


def test_a_whole_pass_method_compresses_in_pages_too(llama):
    """Issue 23: ``compress``'s whole-pass branch (surprise scores after the prefill) kept ``pages=``."""
    c = ts.compress(llama, None, ctx(40), "surprise", keep=0.5, pages=8)
    assert c.cache.paging == Paging(8)
    pre = ts.prefill(llama, None, ctx(40), methods=["surprise"])
    want = pre.compress("surprise", keep=0.5, pages=8)
    for x, y in zip(c.cache.sieve_layers, want.cache.sieve_layers, strict=True):
        assert torch.equal(x.token_index, y.token_index)
        assert int(pages_held(x, Paging(8)).max()) * 8 >= x.n_held  # whole pages
    assert c.stats.kv_bytes == want.stats.kv_bytes == paged_kv_bytes(c.cache, Paging(8))
