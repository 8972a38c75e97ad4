"""Head-adaptive budgets and the ragged per-head layout: oracles, bytes, decoding, generate."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokensieve as ts
from conftest import assert_padded_questions_match_one_by_one, ids, make_model, padded_rows_and_alone, twin
from tokensieve.compat import with_cache
from tokensieve.core.observe.hooks import sieve_attention
from tokensieve.kv import RaggedLayer, SieveLayer
from tokensieve.kv.budget import AdaKV, ZipVL
from tokensieve.kv.budget.adakv import head_distributions

T, Q = 40, 6


def kept_sets(layer: SieveLayer, n_tokens: int) -> torch.Tensor:
    """Bool [B, Hkv, T]: which context tokens each head holds (dense or ragged)."""
    if isinstance(layer, RaggedLayer):
        out = torch.zeros(layer.batch, layer.n_kv_heads, n_tokens, dtype=torch.bool)
        for row in range(layer.batch):
            for head in range(layer.n_kv_heads):
                out[row, head, layer.segment(row, head)[2]] = True
        return out
    return torch.zeros(*layer.token_index.shape[:2], n_tokens, dtype=torch.bool).scatter_(2, layer.token_index, True)


def masked_oracle(model, cache, ctx, question):
    """The full model whose question rows cannot see, per layer and KV head, the evicted context tokens."""
    t, q = ctx.shape[1], question.shape[1]
    masks = {}
    for layer in cache.sieve_layers:
        kept = kept_sets(layer, t)
        mask = torch.ones(t + q, t + q, dtype=torch.bool).tril().repeat(1, kept.shape[1], 1, 1)
        mask[:, :, t:, :t] &= kept[:, :, None, :]
        masks[layer.layer_idx] = mask

    def oracle(module, query, key, value, attention_mask, **kwargs):
        mask = masks.get(module.layer_idx, attention_mask)
        if module.layer_idx in masks:
            mask = mask.repeat_interleave(query.shape[1] // key.shape[1], 1)
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)

    AttentionInterface.register("test_heads_oracle", oracle)
    AttentionMaskInterface.register("test_heads_oracle", sdpa_mask)
    ref = twin(model)
    ref.set_attn_implementation("test_heads_oracle")
    with torch.inference_mode():
        return ref(torch.cat([ctx, question], 1)).logits[:, t:]


# --- the ragged layout equals a masked dense cache ---------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("method,allocator", [("snapkv", "adakv"), ("knorm", "adakv"), ("h2o", "zipvl")])
def test_ragged_model_equals_per_head_masked_model(arch, method, allocator):
    model = ts.prepare(make_model(arch))
    ctx, question = ids(30, T), ids(31, Q)
    params = {"window": 4} if method == "snapkv" else {}
    # hybrid="full-only": the sliding windows stay whole here (tests/test_hybrid.py checks cut windows)
    c = ts.compress(model, None, ctx, method, keep=0.3, allocator=allocator, hybrid="full-only", **params)
    if allocator == "adakv":
        assert any(isinstance(layer, RaggedLayer) for layer in c.cache.layers)
    with torch.inference_mode():
        got = model(question, **with_cache(model, c.cache.fork())).logits
    torch.testing.assert_close(got, masked_oracle(model, c.cache, ctx, question), atol=2e-5, rtol=1e-4)


def test_ragged_decoding_token_by_token_equals_at_once():
    model = ts.prepare(make_model("qwen2"))
    c = ts.compress(model, None, ids(10, T), "snapkv", keep=0.3, allocator="adakv", window=4)
    question = ids(11, 20)  # more new tokens than the spare room: the segments regrow on the way
    with torch.inference_mode():
        at_once = model(question, **with_cache(model, c.cache.fork())).logits
        fork = c.cache.fork()
        one_by_one = torch.cat([model(question[:, i : i + 1], **with_cache(model, fork)).logits for i in range(20)], 1)
    torch.testing.assert_close(at_once, one_by_one, atol=1e-5, rtol=1e-4)


def test_ragged_segments_hold_exactly_what_attention_reads():
    layer = RaggedLayer.from_segments(
        0, 10, 1, 2, [torch.randn(3, 4), torch.randn(5, 4)], [torch.randn(3, 4), torch.randn(5, 4)],
        [torch.tensor([0, 4, 9]), torch.tensor([1, 2, 3, 8, 9])],
    )  # fmt: skip
    assert layer.lengths == [3, 5] and layer.keys.shape == (8, 4)
    k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    fork = layer.fork()
    fork.update(k, v)
    assert fork.lengths == [4, 6] and layer.lengths == [3, 5]  # copy on write: the source is untouched
    assert fork.keys.shape[0] == 4 + 6 + 2 * RaggedLayer.grow  # spare room is bounded by `grow` per segment
    for head in range(2):
        keys, values, index = fork.segment(0, head)
        assert torch.equal(keys[-1], k[0, head, 0]) and torch.equal(values[-1], v[0, head, 0]) and index[-1] == 10
        assert torch.equal(keys[:-1], layer.segment(0, head)[0])
    query = torch.randn(1, 4, 1, 4)  # 2 query heads per KV head
    out, _ = sieve_attention(SimpleNamespace(num_key_value_groups=2), query, k, v, None, scaling=0.5)
    for head in range(4):
        keys, values, _ = fork.segment(0, head // 2)
        want = torch.softmax(query[0, head, 0] @ keys.T * 0.5, -1) @ values
        torch.testing.assert_close(out[0, 0, head], want)
    fork.update(k * 2, v * 2)  # room left: written in place, no regrowth
    sieve_attention(SimpleNamespace(num_key_value_groups=2), query, k * 2, v * 2, None, scaling=0.5)
    assert fork.keys.shape[0] == 4 + 6 + 2 * RaggedLayer.grow and fork.lengths == [5, 7]


# --- bytes held are the kept tokens -----------------------------------------------------------------


@pytest.mark.parametrize("allocator", ["adakv", "zipvl"])
def test_ragged_kv_bytes_are_the_sum_of_kept_tokens(arch, allocator):
    model = ts.prepare(make_model(arch))
    c = ts.compress(model, None, ids(6, T), "snapkv", keep=0.25, allocator=allocator, window=4)
    cfg = c.cache.config
    per_slot = 2 * (getattr(cfg, "head_dim", None) or 16) * 4  # key + value, fp32, one head
    want = 0
    for layer in c.cache.layers:
        if isinstance(layer, RaggedLayer):
            want += sum(layer.lengths) * per_slot
        else:
            want += layer.keys.shape[0] * layer.keys.shape[1] * layer.keys.shape[2] * per_slot
    assert c.stats.kv_bytes == want
    if allocator == "adakv" and arch != "gemma3":  # Hkv x budget per layer, exactly
        assert c.stats.kv_bytes == round(0.25 * T) * cfg.num_key_value_heads * cfg.num_hidden_layers * per_slot
    if allocator == "zipvl":
        assert c.stats.kv_bytes <= round(0.25 * T) * cfg.num_key_value_heads * cfg.num_hidden_layers * per_slot
    # decoding appends, with at most `grow` spare slots per segment
    cache = c.cache.fork()
    with torch.inference_mode():
        model(ids(7, 3), **with_cache(model, cache))
    spare = sum(len(layer.lengths) for layer in cache.layers if isinstance(layer, RaggedLayer)) * RaggedLayer.grow
    grown = c.stats.kv_bytes + 3 * sum(
        (len(layer.lengths) if isinstance(layer, RaggedLayer) else layer.keys.shape[1]) * per_slot
        for layer in c.cache.layers
    )
    assert grown <= cache.kv_bytes() <= grown + spare * per_slot


# --- the allocators' rules ----------------------------------------------------------------------


def test_adakv_is_a_global_top_k_with_a_floor():
    torch.manual_seed(0)
    scores = torch.rand(2, 3, 30) ** 4
    scores[:, 0] *= 10  # head 0 has a few very strong tokens: it should still only keep its floor...
    scores[:, 0, :3] = 100.0
    alloc = AdaKV(floor=0.2)
    counts = alloc.head_budgets(scores, 8, None, 0, 0)
    assert counts.sum(-1).tolist() == [24, 24]
    p = head_distributions(scores, torch.ones(2, 30, dtype=torch.bool))
    for row in range(2):
        floor = round(0.2 * 8)
        rest = p[row].sort(-1, descending=True).values[:, floor:]  # [H, T - floor]
        top = rest.reshape(-1).topk(24 - 3 * floor).indices // rest.shape[1]
        assert counts[row].tolist() == (torch.bincount(top, minlength=3) + floor).tolist()
    assert bool((counts >= 2).all()) and counts[0, 0] < 8  # concentrated head 0 yields slots


def test_adakv_keeps_protected_tokens_and_never_padding():
    scores = torch.rand(2, 2, 20)
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, :12] = False  # 8 real tokens in row 1
    counts = AdaKV().head_budgets(scores, 10, valid, 2, 3)
    assert bool((counts >= 5).all())  # sinks + window
    assert counts[0].sum() == 20 and counts[1].tolist() == [8, 8]  # a short row keeps all its real tokens


def test_zipvl_keeps_the_smallest_set_reaching_tau():
    scores = torch.tensor([[[8.0, 1, 1, 0, 0, 0, 0, 0, 0, 0], [8.0, 0, 0, 1, 1, 0, 0, 0, 0, 0]]])
    # head-mean mass: token 0 = 0.8, tokens 1-4 = 0.05 each
    assert ZipVL(tau=0.8).head_budgets(scores, 10, None, 0, 0).tolist() == [[1, 1]]
    assert ZipVL(tau=0.85).head_budgets(scores, 10, None, 0, 0).tolist() == [[2, 2]]
    assert ZipVL(tau=1.0).head_budgets(scores, 10, None, 0, 0).tolist() == [[5, 5]]
    assert ZipVL(tau=1.0).head_budgets(scores, 3, None, 0, 0).tolist() == [[3, 3]]  # the budget caps it
    with pytest.raises(ts.BudgetError, match="tau"):
        ZipVL(tau=1.5)


# --- end to end ---------------------------------------------------------------------------------


def test_nothing_evicted_is_bit_identical_with_head_budgets(arch):
    model = ts.prepare(make_model(arch))
    ref = twin(model)
    ctx, question = ids(0, T), ids(1, Q)
    for allocator in ("adakv", "zipvl"):
        c = ts.compress(model, None, ctx, "snapkv", keep=1.0, allocator=allocator)
        with torch.inference_mode():
            got = model(question, **with_cache(model, c.cache.fork())).logits
            cache = ts.SieveCache(ref.config)  # an empty cache, no eviction: the plain path
            ref(ctx, **with_cache(ref, cache))
            want = ref(question, **with_cache(ref, cache)).logits
        assert torch.equal(got, want), allocator


@pytest.mark.parametrize("allocator", ["adakv", "zipvl"])
def test_head_budgets_generate_on_every_architecture(arch, allocator):
    model = ts.prepare(make_model(arch))
    c = ts.compress(model, None, ids(7, T), "h2o", keep=0.3, allocator=allocator)
    before = (c.cache.kv_bytes(), c.cache.tokens_held())
    greedy = c.generate(ids(8, Q), max_new_tokens=5, min_new_tokens=5)
    torch.manual_seed(0)
    sampled = c.generate(ids(8, 3, batch=2), max_new_tokens=5, min_new_tokens=5, do_sample=True, temperature=0.8)
    assert greedy.shape == (1, 5) and sampled.shape == (2, 5)
    assert (c.cache.kv_bytes(), c.cache.tokens_held()) == before


def test_plain_generate_with_a_head_adaptive_cache(arch):
    model = make_model(arch)
    cache = ts.SieveCache(model, "snapkv", keep=0.25, allocator="adakv", window=4)
    with torch.inference_mode():
        out = model.generate(ids(9, T), **with_cache(model, cache), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, T + 4)
    assert all(layer.tokens_per_head() == 10 + 3 for layer in cache.sieve_layers)  # 10 kept + 3 appended


def test_ragged_left_padded_batch_matches_rows_compressed_alone():
    model = ts.prepare(make_model("llama"))
    rows = [ids(12, 24)[0].tolist(), ids(13, 36)[0].tolist()]
    compress = functools.partial(ts.compress, model, None, method="snapkv", budget=16, allocator="adakv", window=4)
    assert all(isinstance(layer, RaggedLayer) for layer in compress(rows).cache.layers)
    for got, want in padded_rows_and_alone(model, compress, rows, ids(14, Q)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
    # several left-padded questions on one ragged context agree with asking them one by one
    assert_padded_questions_match_one_by_one(compress(rows[1:]), [ids(19, 3)[0].tolist(), ids(20, 5)[0].tolist()])


def test_bad_allocator_parameters_are_clear_errors(capsys):
    from tokensieve.cli import main

    with pytest.raises(ts.UnknownMethodError, match="bad parameter for allocator 'adakv'"):
        ts.get_allocator("adakv", flor=0.1)
    rc = main(["generate", "--method", "snapkv", "--keep", "0.5", "--allocator", "zipvl", "--allocator-param",
               "tua=0.9", "--context", "some text", "--question", "q?"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "bad parameter for allocator 'zipvl'" in err and "\n" not in err
    with pytest.raises(ts.UnknownMethodError, match="is a budget allocator"):
        ts.get_method("adakv")
