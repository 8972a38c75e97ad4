"""Fixed-budget eviction while generating: budget invariant, incremental = recomputed scores, exactness,
a per-layer per-head masked-attention oracle, batches, composition with prefill compression."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokensieve as ts
from conftest import generate_padded_and_alone, ids, make_model, twin
from tokensieve.compat import with_cache
from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv import get_method
from tokensieve.kv.evicting import DECODE_RULES, DecodeCache, decode_rule
from tokensieve.kv.evicting.rules import GumbelAccumulated

# the fixed-budget rules; ratio_decoding and dms decide their share themselves (tests/test_decode_share.py)
METHODS = [m for m in DECODE_RULES if m not in ("ratio_decoding", "dms")]


@pytest.fixture(scope="module")
def llama():
    return ts.prepare(make_model("llama"))


def feed(model, cache, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Teacher-forced decoding, one token per forward; returns each step's logits."""
    out = []
    with torch.inference_mode():
        for i in range(tokens.shape[1]):
            out.append(model(tokens[:, i : i + 1], **with_cache(model, cache)).logits[:, -1])
    return out


# --- the budget holds at every step -------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(METHODS),
    lengths=st.lists(st.integers(2, 40), min_size=1, max_size=2),
    budget=st.integers(1, 45),
    steps=st.integers(1, 10),
)
def test_budget_holds_at_every_step(llama, method, lengths, budget, steps):
    rows = [ids(i + 40, n)[0].tolist() for i, n in enumerate(lengths)]
    cache = DecodeCache(llama, method, budget=budget)
    seen: list[tuple[int, int, int]] = []
    for layer in cache.evicting_layers:
        layer.on_step = lambda layer: seen.append((layer.layer_idx, layer.n_held, layer.cumulative_length))
    from tokensieve.runtime.encode import left_pad

    prompt, mask = left_pad(rows, 0)
    mask = torch.ones_like(prompt) if mask is None else mask
    with torch.inference_mode():
        out = llama.generate(
            prompt,
            attention_mask=mask,
            **with_cache(llama, cache),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
        )
    assert out.shape == (len(rows), prompt.shape[1] + steps)
    assert len(seen) == 3 * steps  # every layer reported after the prompt and after each new token
    for _, held, total in seen:
        assert held == min(budget, total)  # never more than the budget after a forward, and nothing lost early
    assert cache.peak_tokens_held() <= budget + 1  # inside a decode forward: the budget plus the new token


# --- incremental scores equal scores recomputed over the whole sequence ------------------------------


@pytest.mark.parametrize(
    "method,params",
    [
        ("h2o", {}),
        ("a2sf", {"decay": 0.7}),
        ("scissorhands", {"history": 9}),
        ("scissorhands", {"history": None}),
        ("tova", {}),
        ("keyformer", {"tau": 1.5, "tau_end": 1.5}),
    ],
)
@pytest.mark.parametrize("arch,padded", [("llama", False), ("gemma3", False), ("qwen2", True)])
def test_incremental_scores_equal_recomputed_scores(arch, padded, method, params):
    """Nothing evicted: after the prompt, a 3-token forward and 5 single-token steps, each running score
    equals the method's score recomputed from scratch by a prefill over the whole sequence (every query,
    every key). The padded case runs two left-padded rows of different lengths."""
    from tokensieve.runtime.encode import left_pad

    model = ts.prepare(make_model(arch))
    lengths = (20, 13) if padded else (20,)
    rows = [ids(1 + i, n)[0].tolist() for i, n in enumerate(lengths)]
    prompt, mask = left_pad(rows, 0)
    new = ids(9, 8, batch=len(rows))
    cache = DecodeCache(model, method, budget=1000, **params)
    full_mask = None if mask is None else torch.cat([mask, torch.ones_like(new)], 1)
    with torch.inference_mode():
        model(prompt, attention_mask=mask, **with_cache(model, cache))
        for lo, hi in [(0, 3), *((i, i + 1) for i in range(3, 8))]:
            m = None if full_mask is None else full_mask[:, : prompt.shape[1] + hi]
            model(new[:, lo:hi], attention_mask=m, **with_cache(model, cache))

    rule = decode_rule(get_method(method, **params))
    pre = ts.prefill(model, None, [r + n for r, n in zip(rows, new.tolist(), strict=True)], needs=rule.needs())
    for layer in cache.evicting_layers:
        full = pre.cache.layers[layer.layer_idx]
        x = ScoreInputs(full.keys, full.values, full.valid, pre.observations[layer.layer_idx], layer.layer_idx)
        want, got = rule.score(rule.init(x)), rule.score(layer.state)
        if full.valid is not None:  # padding slots are never kept over a real token: their score is moot
            want, got = want * full.valid[:, None], got * full.valid[:, None]
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_keyformer_temperature_rises_over_decode_steps():
    rule = GumbelAccumulated(tau=1.0, tau_end=2.0, tau_steps=4)
    taus = rule.tau_at(torch.arange(10, 17), prompt_len=10).tolist()
    assert taus == pytest.approx([1.25, 1.5, 1.75, 2.0, 2.0, 2.0, 2.0])


# --- eviction is exact: a per-layer, per-head masked-attention oracle ---------------------------------


def test_decode_eviction_equals_masked_attention_and_scores_are_the_oracle_sums():
    """With eviction at every step, (1) each decode step's logits equal the full model whose row for that
    step sees, in each layer and KV head, exactly the slots the cache held; (2) the running H2O score of
    each held slot equals the oracle's attention summed over every query that saw it."""
    model = ts.prepare(make_model("qwen2"))
    t, n, budget = 16, 7, 9
    prompt, new = ids(3, t), ids(4, n)
    cache = DecodeCache(model, "h2o", budget=budget)
    held: dict[int, list[torch.Tensor]] = {layer.layer_idx: [] for layer in cache.evicting_layers}
    with torch.inference_mode():
        model(prompt, **with_cache(model, cache))
    for layer in cache.evicting_layers:  # before each step's eviction: what that step's query attended
        layer.attention_mask = _recording(layer, held[layer.layer_idx])
    got = torch.stack(feed(model, cache, new), 1)

    seq = torch.cat([prompt, new], 1)
    masks, weights = {}, {}
    for layer in cache.evicting_layers:
        mask = torch.ones(t + n, t + n, dtype=torch.bool).tril().repeat(1, 2, 1, 1)  # [1, Hkv, T, T]
        for i, pos in enumerate(held[layer.layer_idx]):
            mask[0, :, t + i] = False
            mask[0, :, t + i].scatter_(1, pos[0], True)
        masks[layer.layer_idx] = mask

    def oracle(module, query, key, value, attention_mask, **kwargs):
        g = query.shape[1] // key.shape[1]
        m = masks[module.layer_idx].repeat_interleave(g, 1)
        logits = (query @ key.repeat_interleave(g, 1).transpose(-1, -2)) * kwargs.get(
            "scaling", query.shape[-1] ** -0.5
        )
        probs = torch.softmax(logits.masked_fill(~m, float("-inf")), -1)
        weights[module.layer_idx] = probs
        return (probs @ value.repeat_interleave(g, 1)).transpose(1, 2), probs

    AttentionInterface.register("test_decode_oracle", oracle)
    AttentionMaskInterface.register("test_decode_oracle", sdpa_mask)
    ref = twin(model)
    ref.set_attn_implementation("test_decode_oracle")
    with torch.inference_mode():
        want = ref(seq).logits[:, t:]  # row t + i is the step that fed new[i]
    torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)

    for layer in cache.evicting_layers:
        w = weights[layer.layer_idx]  # [1, H, T, T]
        per_kv = w.view(1, 2, w.shape[1] // 2, t + n, t + n).mean(2)  # GQA mean
        total = per_kv.sum(2)  # every query that saw each token (prompt rows saw the whole prompt)
        want_scores = total.gather(2, layer.token_index)
        torch.testing.assert_close(layer.state["acc"], want_scores, atol=2e-5, rtol=1e-4)


def _recording(layer, into: list[torch.Tensor]):
    original = layer.attention_mask

    def attention_mask(q_len, mask):
        b, h, s = layer.keys.shape[:3]
        into.append(layer.token_index if layer.token_index is not None else torch.arange(s).expand(b, h, s))
        return original(q_len, mask)

    return attention_mask


# --- exactness, batches, composition, errors --------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_nothing_evicted_is_bit_identical(arch, method):
    model = ts.prepare(make_model(arch))
    ref = twin(model)
    prompt, new = ids(5, 24), ids(6, 6)
    cache = DecodeCache(model, method, budget=64)
    with torch.inference_mode():
        first = model(prompt, **with_cache(model, cache)).logits
        ref_cache = DynamicCache(config=ref.config)
        want_first = ref(prompt, **with_cache(ref, ref_cache)).logits
    got, want = feed(model, cache, new), feed(ref, ref_cache, new)
    assert torch.equal(first, want_first)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("method", METHODS)
def test_every_decode_method_generates_on_every_architecture(arch, method):
    model = ts.prepare(make_model(arch))
    cache = DecodeCache(model, method, budget=12)
    with torch.inference_mode():
        out = model.generate(
            ids(7, 30), **with_cache(model, cache), max_new_tokens=10, min_new_tokens=10, do_sample=False
        )
    assert out.shape == (1, 40)
    assert all(layer.n_held == 12 for layer in cache.evicting_layers)


@pytest.mark.parametrize("method", ["h2o", "scissorhands", "tova"])
def test_left_padded_batch_matches_rows_decoded_alone(llama, method):
    rows = [ids(8, 14)[0].tolist(), ids(9, 25)[0].tolist()]
    pairs = generate_padded_and_alone(llama, lambda: DecodeCache(llama, method, budget=10), rows, 12)
    for row, (both, alone) in enumerate(pairs):
        assert torch.equal(both, alone), row


def test_prefill_compression_composes_with_decode_eviction(llama):
    """SnapKV cuts the prompt to 30% at prefill (the same tokens ts.compress keeps), the cache then grows
    to the decode budget and H2O holds it there."""
    prompt = ids(10, 40)
    cache = DecodeCache(llama, "h2o", budget=16, prefill="snapkv", prefill_keep=0.3)
    with torch.inference_mode():
        llama(prompt, **with_cache(llama, cache))
    alone = ts.compress(llama, None, prompt, "snapkv", keep=0.3)
    for layer, ref in zip(cache.evicting_layers, alone.cache.sieve_layers, strict=True):
        assert torch.equal(layer.token_index, ref.token_index)
    feed(llama, cache, ids(11, 10))
    assert [layer.n_held for layer in cache.evicting_layers] == [16] * 3


def test_decode_errors(llama):
    with pytest.raises(ts.UnknownMethodError, match=r"no decode-time rule.*h2o"):
        DecodeCache(llama, "knorm", budget=8)
    with pytest.raises(ts.UnknownMethodError, match="unknown method id"):
        DecodeCache(llama, "h2oo", budget=8)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ts.BudgetError, match="positive integer"):
            DecodeCache(llama, "h2o", budget=bad)
    with pytest.raises(ts.InvalidKeepError):
        DecodeCache(llama, "h2o", budget=8, prefill="snapkv", prefill_keep=1.5)


def test_rules_need_what_they_read():
    for method in METHODS:
        assert isinstance(decode_rule(get_method(method)).needs(), Needs)


@pytest.mark.parametrize("prefill", ["ems", "mikv", "razor", "zerotuning"])
def test_prefill_methods_that_do_more_than_evict_are_refused(llama, prefill):
    """Decode eviction carries a prefill method's *selection* on; merging, quantizing or whole heads would be
    silently dropped, so they are refused (ems evicting only is fine)."""
    with pytest.raises(ts.TokenSieveError, match="does more than evict"):
        DecodeCache(llama, "h2o", budget=32, prefill=prefill, prefill_keep=0.5)
    DecodeCache(llama, "h2o", budget=32, prefill=get_method("ems", merge=False), prefill_keep=0.5)
