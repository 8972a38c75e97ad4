"""Hybrid-attention models (a tiny Gemma-3: sliding-window and full layers): keep is a share of the whole cache's
bytes, cut windows keep positions and masks exact, nothing removed is bit-identical, every KV family acts or
refuses, and generation stops at the model's end-of-sequence ids."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokensieve as ts
from conftest import ids as random_ids
from conftest import make_model, twin
from tokensieve.compat import with_cache
from tokensieve.errors import BudgetError, TokenSieveError
from tokensieve.kv.budget.hybrid import Hybrid
from tokensieve.kv.cache.window import WindowLayer
from tokensieve.kv.pipeline import prefill

T, Q = 64, 6  # the tiny Gemma-3's window is 8: its sliding layers hold 7 slots, its full layers 64


ids = partial(random_ids, high=120)  # this file's inputs stay below id 120


@pytest.fixture(scope="module")
def gemma():
    return ts.prepare(make_model("gemma3"))


@pytest.mark.parametrize("policy", ["full-first", "even", "full-only"])
@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_bytes_are_the_requested_share_of_the_whole_cache(gemma, policy, keep):
    c = ts.compress(gemma, None, ids(1, T), "snapkv", keep=keep, hybrid=policy, min_window=2)
    assert c.stats.kv_bytes_full == ts.prefill(gemma, None, ids(1, T)).cache.kv_bytes()
    assert abs(c.stats.ratio - keep) <= 0.02, (policy, keep, c.stats.ratio)
    held = c.cache.tokens_held()
    if policy == "full-only":  # the windows stay whole (7 slots)
        assert held[0] == held[2] == 7
    else:
        assert held[0] < 7 and isinstance(c.cache.layers[0], WindowLayer)
    assert c.stats.kv_bytes_sliding == sum(held[i] for i in (0, 2)) * c.stats.kv_bytes // sum(held)


def test_a_budget_the_windows_alone_exceed_is_refused_in_one_line(gemma):
    with pytest.raises(BudgetError, match="sliding windows alone hold") as err:
        ts.compress(gemma, None, ids(1, T), "snapkv", keep=0.05, hybrid="full-only")
    assert "\n" not in str(err.value)
    with pytest.raises(TokenSieveError, match="hybrid="):
        ts.compress(gemma, None, ids(1, T), "snapkv", keep=0.5, hybrid="sliding")


def test_split_prefers_full_layers_and_gives_back_what_they_cannot_use():
    h = Hybrid("full-first", min_window=32)
    full, window = h.split(0.25, 1000, 3, 15, 511)  # Gemma-3 270M at 1k tokens
    assert window == 32 and full == round((0.25 * (3000 + 15 * 511) - 15 * 32) / 3)
    full, window = h.split(0.9, 1000, 3, 15, 511)
    assert full == 1000 and window == round((0.9 * (3000 + 15 * 511) - 3000) / 15)
    assert Hybrid("even").split(0.25, 1000, 3, 15, 511) == (250, 128)


def test_nothing_removed_is_bit_identical(gemma):
    ctx, question = ids(2, T), ids(3, Q)
    c = ts.compress(gemma, None, ctx, "snapkv", keep=1.0)
    assert not any(isinstance(layer, WindowLayer) for layer in c.cache.layers)
    ref = twin(gemma)
    cache = DynamicCache(config=ref.config)
    with torch.inference_mode():
        got = gemma(question, **with_cache(gemma, c.cache.fork())).logits
        ref(ctx, **with_cache(ref, cache))
        want = ref(question, **with_cache(ref, cache)).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize("policy", ["full-first", "even"])
def test_cut_windows_and_evicted_full_layers_equal_the_masked_model(gemma, policy):
    """Positions and masks in both layer types: the compressed cache equals the full model whose question rows
    cannot see, in each full layer and head, the evicted context tokens, and in each sliding layer the context
    tokens before the window's kept tail (the model's own sliding window still applies on top)."""
    ctx, question = ids(4, T), ids(5, Q)
    c = ts.compress(gemma, None, ctx, "snapkv", keep=0.25, hybrid=policy, min_window=3)
    with torch.inference_mode():
        got = gemma(question, **with_cache(gemma, c.cache.fork())).logits
    masks = {}
    for i, layer in enumerate(c.cache.layers):
        kept = torch.zeros(1, layer.token_index.shape[1], T, dtype=torch.bool).scatter_(2, layer.token_index, True)
        masks[i] = kept
    window = gemma.config.sliding_window

    def oracle(module, query, key, value, attention_mask, **kwargs):
        kept = masks[module.layer_idx]
        n = key.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool).tril().repeat(1, kept.shape[1], 1, 1)
        if isinstance(c.cache.layers[module.layer_idx], WindowLayer):
            pos = torch.arange(n)
            mask &= (pos[:, None] - pos[None, :]) < window
        mask[:, :, T:, :T] &= kept[:, :, None, :]
        mask = mask.repeat_interleave(query.shape[1] // key.shape[1], 1)
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)

    AttentionInterface.register("test_hybrid_oracle", oracle)
    AttentionMaskInterface.register("test_hybrid_oracle", sdpa_mask)
    ref = twin(gemma)
    ref.set_attn_implementation("test_hybrid_oracle")
    with torch.inference_mode():
        want = ref(torch.cat([ctx, question], 1)).logits[:, T:]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_a_window_slides_on_while_the_answer_is_generated(gemma):
    c = ts.compress(gemma, None, ids(6, T), "snapkv", keep=0.25, min_window=3)
    window = c.cache.layers[0]
    n = window.n_held
    assert isinstance(window, WindowLayer) and n < gemma.config.sliding_window - 1
    fork = c.cache.fork()
    with torch.inference_mode():
        gemma(ids(7, 12), **with_cache(gemma, fork))
        gemma(ids(8, 1), **with_cache(gemma, fork))
    layer = fork.layers[0]
    # the last query (position T + 12) saw positions > T + 12 - window: only those are held
    assert layer.token_index[0, 0].tolist() == list(range(T + 13 - gemma.config.sliding_window, T + 13))
    assert window.n_held == n  # the compressed cache itself is untouched


FAMILIES = [
    ("snapkv", {}),
    ("kvzip", {}),  # scope=global: one top-k over the full layers
    ("kvzip", {"scope": "layer"}),
    ("keydiff", {}),
    ("streaming", {}),
    ("h2o", {"allocator": "adakv"}),
    ("mikv", {"budget_of": "bytes"}),
    ("snapkv", {"pages": 4}),
]


@pytest.mark.parametrize("method,params", FAMILIES, ids=[f"{m}-{'-'.join(p)}" for m, p in FAMILIES])
def test_every_prefill_family_meets_the_bytes_on_a_hybrid_model(gemma, method, params):
    c = ts.compress(gemma, None, ids(9, T), method, keep=0.5, **params)
    assert abs(c.stats.ratio - 0.5) <= 0.06, c.stats.ratio  # pages round to whole pages, mikv to its groups
    out = c.generate(ids(10, Q), max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 4)


def test_generation_stops_at_the_models_end_of_sequence_ids(gemma):
    pre = prefill(gemma, None, ids(12, T))
    free = pre.full().generate(ids(13, Q), max_new_tokens=8, min_new_tokens=8)[0].tolist()
    stop = free[2]
    gemma.generation_config.eos_token_id = [stop]
    try:
        out = pre.full().generate(ids(13, Q), max_new_tokens=8)[0].tolist()
    finally:
        gemma.generation_config.eos_token_id = None
    assert out[: free.index(stop) + 1] == free[: free.index(stop) + 1] and len(out) == free.index(stop) + 1


@pytest.mark.real
def test_real_gemma_keeps_a_seven_digit_code_at_a_quarter_of_the_bytes(gemma3_270m):
    """Question unseen, kvzip, 0.25 of the whole cache's bytes (the sliding windows cut to 32 tokens, the full
    layers holding the rest); the code sits outside every sliding window, so only the full layers can carry it."""
    from tokensieve.runtime.passkey import passkey_context

    model, tok = gemma3_270m
    task = passkey_context(tok, 1000, 0.3, "8197047")
    c = ts.compress(model, tok, task.context, "kvzip", keep=0.25)
    assert abs(c.stats.ratio - 0.25) <= 0.02
    answer = c.answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=12)
    assert task.correct(answer), answer
    assert "Answer" not in answer  # stops where a base model would start a second answer


def test_hybrid_parameters_are_checked_in_one_line():
    with pytest.raises(TokenSieveError, match="min_window"):
        Hybrid.pop({"min_window": "abc"})
    assert Hybrid.pop({"hybrid": "even", "min_window": "8"}) == Hybrid("even", 8)
