"""The sink map and the attention modifiers (ACT, ZeroTuning) against full-matrix oracles."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokensieve as ts
from conftest import ids, make_model, twin
from tokensieve.compat import with_cache
from tokensieve.kv import sink_map

T, Q = 40, 5


def eager_attentions(model, ctx):
    eager = twin(model)
    eager.set_attn_implementation("eager")
    with torch.inference_mode():
        return eager(ctx, output_attentions=True).attentions  # per layer [1, H, T, T]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sink_map_is_the_mean_attention_each_token_receives(arch):
    model = ts.prepare(make_model(arch))
    ctx = ids(0, T)
    smap = sink_map(model, None, ctx, epsilon=0.08, min_queries=10)
    attn = eager_attentions(model, ctx)
    seen_by = torch.arange(T, 0, -1).float()  # token j is seen by the T - j queries i >= j
    for r, layer in enumerate(smap.layers):
        want = attn[layer][0].sum(1) / seen_by  # [H, T]
        torch.testing.assert_close(smap.share[r], want, atol=1e-5, rtol=1e-4)
    assert smap.candidates.tolist() == [T - j >= 10 for j in range(T)]
    hits = {(s.layer, s.head, s.token) for s in smap.sinks()}
    want_hits = {
        (layer, h, j)
        for r, layer in enumerate(smap.layers)
        for h in range(smap.share.shape[1])
        for j in range(T)
        if smap.share[r, h, j] >= 0.08 and T - j >= 10
    }
    assert hits == want_hits and hits


def test_sink_map_plot_writes_a_png(tmp_path):
    model = ts.prepare(make_model("qwen2"))
    smap = sink_map(model, None, ids(1, T), min_queries=8)
    path = smap.plot(tmp_path / "sinks.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(smap.to_json()) == {"epsilon", "layers", "first_token_share", "sinks"}


def biased_oracle(model, layers: dict[int, torch.Tensor], ctx, question):
    """The model whose attention in ``layers`` adds a per-(head, column) logit bias [H, T], by a plain softmax."""

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        g = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
        logits = query @ k.transpose(-1, -2) * scaling
        n = logits.shape[-1]
        allowed = torch.ones(n, n, dtype=torch.bool).tril()[-query.shape[2] :]
        if attention_mask is not None:
            allowed = attention_mask
        if module.layer_idx in layers:
            bias = layers[module.layer_idx]
            logits[..., : bias.shape[-1]] += bias[:, None, :]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        return (probs @ v).transpose(1, 2), None

    AttentionInterface.register("test_biased_oracle", attention)
    AttentionMaskInterface.register("test_biased_oracle", sdpa_mask)
    ref = twin(model)
    ref.set_attn_implementation("test_biased_oracle")
    with torch.inference_mode():
        return ref(torch.cat([ctx, question], 1)).logits[:, ctx.shape[1] :]


def test_zerotuning_scales_the_initial_tokens_attention():
    model = ts.prepare(make_model("llama"))
    ctx, question = ids(2, T), ids(3, Q)
    c = ts.compress(model, None, ctx, "zerotuning", keep=1.0, gamma=0.3, first_layer=1)
    with torch.inference_mode():
        got = model(question, **with_cache(model, c.cache.fork())).logits
    bias = torch.zeros(4, T)
    bias[:, 0] = math.log(0.3)
    want = biased_oracle(model, {1: bias, 2: bias}, ctx, question)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    plain = ts.compress(model, None, ctx, "h2o", keep=1.0)
    with torch.inference_mode():
        assert not torch.allclose(got, model(question, **with_cache(model, plain.cache.fork())).logits, atol=1e-3)


def test_act_damps_the_hidden_sinks_it_measures():
    model = ts.prepare(make_model("llama"))
    ctx, question = ids(4, T), ids(5, Q)
    c = ts.compress(model, None, ctx, "act", keep=1.0, epsilon=0.07, beta=0.4, first_layer=0, min_queries=10)
    attn = eager_attentions(model, ctx)
    seen_by = torch.arange(T, 0, -1).float()
    biases = {}
    for layer in c.cache.sieve_layers:
        share = attn[layer.layer_idx][0].sum(1) / seen_by  # [H, T]
        sink = (share >= 0.07) & (seen_by >= 10)
        sink[:, 0] = False  # the initial sink is left alone
        assert sink.any()
        assert torch.equal(layer.bias[0, :, :T] != 0, sink)
        biases[layer.layer_idx] = torch.where(sink, math.log(0.4), 0.0)
    with torch.inference_mode():
        got = model(question, **with_cache(model, c.cache.fork())).logits
    # the oracle uses the sinks measured on the prompt for the question rows too (they are fixed at prefill)
    torch.testing.assert_close(got, biased_oracle(model, biases, ctx, question), atol=2e-5, rtol=1e-4)


def test_modifiers_keep_every_token_and_change_the_prefill_only_through_compress():
    model = ts.prepare(make_model("gemma3"))
    ctx = ids(6, T)
    with pytest.raises(ts.BudgetError, match="keeps every token"):
        ts.compress(model, None, ctx, "zerotuning", keep=0.5)
    pre = ts.prefill(model, None, ctx)
    with pytest.raises(ts.TokenSieveError, match="prefill itself"):
        pre.compress("act", keep=1.0)
    c = ts.compress(model, None, ctx, "act", keep=1.0)
    assert c.stats.kv_bytes == c.stats.kv_bytes_full
    assert c.generate(ids(7, 3), max_new_tokens=3, min_new_tokens=3).shape == (1, 3)


@pytest.mark.parametrize("method", ["act", "zerotuning"])
def test_modifiers_generate_on_every_architecture(arch, method):
    model = ts.prepare(make_model(arch))
    c = ts.compress(model, None, ids(8, T), method, keep=1.0)
    greedy = c.generate(ids(9, Q), max_new_tokens=4, min_new_tokens=4)
    torch.manual_seed(0)
    batch = torch.cat([ids(10, 3), ids(11, 3)])
    sampled = c.generate(batch, max_new_tokens=4, min_new_tokens=4, do_sample=True, temperature=0.8)
    assert greedy.shape == (1, 4) and sampled.shape == (2, 4)


@pytest.mark.parametrize("q_len,n,masked", [(1, 40, False), (5, 5, False), (5, 40, True)])
def test_biased_decode_path_equals_the_padded_sdpa_path(q_len, n, masked):
    """Without a mask, the layer only gets several queries when nothing precedes them (see attention_mask)."""
    from tokensieve.kv import BiasedLayer

    g = torch.Generator().manual_seed(0)
    b, h, h_kv, d = 2, 6, 2, 16
    q, k, v = (torch.randn(b, hh, t, d, generator=g) for hh, t in ((h, q_len), (h_kv, n), (h_kv, n)))
    bias = torch.randn(b, h, n, generator=g)
    allowed = None
    if masked:
        allowed = torch.ones(b, 1, q_len, n, dtype=torch.bool).tril(n - q_len)
        allowed[1, ..., :3] = False  # left padding in row 1
    layer = BiasedLayer(0, lambda *a: None)
    layer.bias = bias
    small = layer._biased(q, k, v, allowed, 0.25)
    layer.small_q = 0  # force the padded SDPA path
    big = layer._biased(q, k, v, allowed, 0.25)
    torch.testing.assert_close(small, big, atol=1e-5, rtol=1e-5)
