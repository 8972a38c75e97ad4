"""Retrieval heads (razor, compresskv), calibration, and evict-then-merge (ems)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import tokensieve as ts
from conftest import ids, make_model
from planted import planted_model
from tokensieve.compat import with_cache
from tokensieve.core.observe.hooks import sieve_attention
from tokensieve.core.ops.merge import merge_into
from tokensieve.core.scores.retrieval import srh_scores
from tokensieve.kv import RaggedLayer, calibrate, calibration_path, get_calibration
from tokensieve.kv.budget import ErrorProportional

T = 40


@pytest.fixture(scope="module")
def planted():
    return ts.prepare(planted_model())


def repeated(seed: int = 0, n: int = 16, prefix: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.randperm(34, generator=torch.Generator().manual_seed(seed))[:n] + 2
    return torch.cat([r, r[:prefix]])[None], r


# --- detection ----------------------------------------------------------------------------------


def test_planted_induction_and_echo_heads_are_detected(planted):
    cal = calibrate(planted)
    # layer 1, query head 2 copies by induction; layer 1, query head 0 echoes (itself and the previous occurrence)
    assert cal.induction.argmax() == 1 * 4 + 2 and cal.induction[1, 2] > 0.9
    assert cal.echo.argmax() == 1 * 4 + 0 and 0.4 < cal.echo[1, 0] <= 0.5
    others = torch.ones(2, 4, dtype=torch.bool)
    others[1, 2] = others[1, 0] = False
    assert cal.induction[others].max() < 0.1 and cal.echo[others].max() < 0.1
    # per KV head: the induction head is KV head 1 of layer 1, the echo head KV head 0 of layer 1
    assert cal.retrieval_kv_heads(induction=0.25, echo=0.0).tolist() == [[False, False], [False, True]]
    assert cal.retrieval_kv_heads(induction=0.25, echo=0.25).tolist() == [[False, False], [True, True]]


def test_razor_keeps_retrieval_heads_whole_so_copying_survives(planted, calibration_dir):
    ctx, r = repeated(3)
    with torch.inference_mode():
        assert planted(ctx).logits[0, -5:].argmax(-1).tolist() == r[1:6].tolist()  # the circuit copies
    question = r[5:6][None]  # the model should continue with r[6], found only by looking back to position 6
    razor = ts.compress(planted, None, ctx, "razor", keep=0.6, induction=0.25, echo=0.0)
    stream = ts.compress(planted, None, ctx, "streaming", keep=0.6)
    assert razor.stats.kv_bytes <= stream.stats.kv_bytes
    with torch.inference_mode():
        assert planted(question, **with_cache(planted, razor.cache.fork())).logits[0, -1].argmax() == r[6]
        assert planted(question, **with_cache(planted, stream.cache.fork())).logits[0, -1].argmax() != r[6]
    # the layout: the induction head (layer 1, KV head 1) holds every token, the others sinks + window + 1
    layers = razor.cache.layers
    window = razor_window = (round(0.6 * 21) * 4 - 21) // 3 - 1
    assert [layer.lengths for layer in layers] == [[razor_window + 1] * 2, [razor_window + 1, 21]]
    k_all = ts.prefill(planted, None, ctx).cache.layers[0].keys[0, 0]
    keys, _, index = layers[0].segment(0, 0)
    kept = index[1:]
    assert (
        index[0] == -1 and kept[:4].tolist() == [0, 1, 2, 3] and kept[4:].tolist() == list(range(21 - window + 4, 21))
    )
    dropped = sorted(set(range(21)) - set(kept.tolist()))
    torch.testing.assert_close(keys[0], k_all[dropped].mean(0))  # the compensation token: their mean key
    assert math.isclose(float(layers[0].flat_bias[0]), math.log(len(dropped)), rel_tol=1e-6)


def test_razor_needs_room_beyond_its_retrieval_heads(planted):
    ctx, _ = repeated(1)
    with pytest.raises(ts.BudgetError, match="razor keeps 2 of 4 KV heads whole"):
        ts.compress(planted, None, ctx, "razor", keep=0.5, induction=0.25, echo=0.25)
    with pytest.raises(ts.BudgetError, match="sets each head's budget itself"):
        ts.compress(planted, None, ctx, "razor", keep=0.8, induction=0.25, echo=0.0, allocator="adakv")


def test_calibration_is_cached_per_model_in_a_file(calibration_dir, monkeypatch):
    model = make_model("qwen2", seed=5)
    path = calibration_path(model)
    assert path.parent == calibration_dir and not path.exists()
    first = get_calibration(model, quiet=True)
    assert path.exists()
    from tokensieve.kv import calibration as module

    module._loaded.clear()
    monkeypatch.setattr(module, "calibrate", lambda *a, **k: pytest.fail("recalibrated instead of loading"))
    again = get_calibration(model)
    for name in ("echo", "induction", "retrieval", "layer_error"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert again.layers == [0, 1, 2] and again.n_kv_heads == 2
    assert calibration_path(make_model("qwen2", seed=6)) != path  # other weights, another calibration


# --- compresskv -----------------------------------------------------------------------------------


def test_srh_scores_read_only_the_layers_retrieval_heads():
    torch.manual_seed(0)
    probs = torch.rand(1, 3, 2, 4, 10)  # 3 KV heads x 2 query heads
    retrieval = torch.tensor([0.1, 0.9, 0.0, 0.0, 0.8, 0.2])  # top 2: query heads 1 (group 0) and 4 (group 2)
    s = srh_scores(probs, retrieval, heads=2)
    summed = probs.sum(3)
    torch.testing.assert_close(s[:, 0], summed[:, 0, 1])
    torch.testing.assert_close(s[:, 2], summed[:, 2, 0])
    torch.testing.assert_close(s[:, 1], (summed[:, 0, 1] + summed[:, 2, 0]) / 2)  # no retrieval head: the layer's


def test_error_proportional_layer_budgets():
    alloc = ErrorProportional(floor=0.2)
    with pytest.raises(ts.CalibrationError, match="calibration"):
        alloc.layer_budgets(10, 3, 100)
    alloc.errors = [1.0, 3.0, 2.0]
    budgets = alloc.layer_budgets(10, 3, 100)
    assert sum(budgets) == 30 and budgets == [round(10 * (0.2 + 0.8 * 3 * e / 6)) for e in (1, 3, 2)]
    capped = alloc.layer_budgets(10, 3, 12)  # a layer cannot hold more than the context: the others get the rest
    assert sum(capped) == 30 and max(capped) == 12 and capped[1] == 12


def test_compresskv_method_and_allocator_end_to_end(arch):
    model = ts.prepare(make_model(arch))
    cal = get_calibration(model, quiet=True)
    c = ts.compress(model, None, ids(2, T), "compresskv", keep=0.3, allocator="compresskv", window=4)
    held = [layer.keys.shape[-2] for layer in c.cache.sieve_layers]
    errors = cal.layer_error.tolist()
    assert sum(held) == round(0.3 * T) * len(held)
    assert held.index(max(held)) == errors.index(max(errors))  # the layer that suffers most keeps most
    out = c.generate(ids(3, 4), max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 4)


# --- evict-then-merge -----------------------------------------------------------------------------


def test_merge_preserves_the_sum_of_weights():
    torch.manual_seed(0)
    keep_k, keep_v = torch.randn(5, 8), torch.randn(5, 8)
    drop_k = torch.cat([keep_k[[0, 0, 3]] + 0.01 * torch.randn(3, 8), torch.randn(4, 8)])
    drop_v = torch.randn(7, 8)
    k, v, w, merged = merge_into(keep_k, keep_v, drop_k, drop_v, 0.95, drop_w=torch.tensor([1.0, 2, 1, 1, 1, 1, 1]))
    assert merged[:3].all() and w.tolist()[0] == 1 + 1 + 2 and w[3] == 2 and w.sum() == 5 + 4
    sim = torch.nn.functional.cosine_similarity(drop_k[:2], keep_k[:1])
    a = torch.tensor([1.0, 2.0]) * sim
    torch.testing.assert_close(v[0], (keep_v[0] + a[0] * drop_v[0] + a[1] * drop_v[1]) / (1 + a.sum()))
    assert torch.equal(k[1], keep_k[1])  # a slot that absorbed nothing is untouched


def test_merging_duplicates_leaves_attention_exact():
    """A slot standing for m identical tokens (log m added to its logit) draws exactly their attention."""
    torch.manual_seed(1)
    keys, values = torch.randn(12, 8), torch.randn(12, 8)
    dup = torch.tensor([2, 2, 5, 7, 7, 7])
    full_k, full_v = torch.cat([keys, keys[dup]]), torch.cat([values, values[dup]])
    k, v, w, merged = merge_into(keys, values, keys[dup], values[dup], 0.999)
    assert merged.all() and w.sum() == 18
    layer = RaggedLayer.from_segments(0, 18, 1, 1, [k], [v], [torch.arange(12)], [w.log()])
    q = torch.randn(1, 2, 1, 8)  # two query heads on the one KV head
    k_new, v_new = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    layer.update(k_new, v_new)
    got, _ = sieve_attention(SimpleNamespace(num_key_value_groups=2), q, k_new, v_new, None, scaling=0.3)
    all_k, all_v = torch.cat([full_k, k_new[0, 0]]), torch.cat([full_v, v_new[0, 0]])
    want = torch.softmax(q[0, :, 0] @ all_k.T * 0.3, -1) @ all_v  # [2, 8]
    torch.testing.assert_close(got[0, 0], want)


def test_ems_without_merges_equals_plain_eviction(arch):
    model = ts.prepare(make_model(arch))
    ctx, question = ids(4, T), ids(5, 6)
    evict = ts.compress(model, None, ctx, "ems", keep=0.3, merge=False)
    unmerged = ts.compress(model, None, ctx, "ems", keep=0.3, threshold=1.01)
    merged = ts.compress(model, None, ctx, "ems", keep=0.3, threshold=-1.0)
    assert all(isinstance(layer, RaggedLayer) for layer in unmerged.cache.sieve_layers)
    assert all(layer.flat_bias is None for layer in unmerged.cache.sieve_layers)
    for layer in merged.cache.sieve_layers:  # threshold -1: every evicted real token is folded into a slot
        assert math.isclose(float(layer.flat_bias.exp().sum()), layer.n_kv_heads * T, rel_tol=1e-5)
    with torch.inference_mode():
        a = model(question, **with_cache(model, evict.cache.fork())).logits
        b = model(question, **with_cache(model, unmerged.cache.fork())).logits
        c = model(question, **with_cache(model, merged.cache.fork())).logits
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(a, c)
    assert merged.stats.kv_bytes <= evict.stats.kv_bytes * (1 + 4 / (2 * 16 * 4)) + 1  # + 4-byte weight per slot
