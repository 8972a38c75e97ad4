"""Issue 28 (second round): ``cam`` (evicted values merged into the next kept ones) and ``qfilter`` (calibrated
per-head filter directions), each against a direct formula on a tiny model."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from conftest import ids as random_ids
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import CalibrationError
from tokensieve.kv import calibrate_offline, compress, get_method, prefill

T = 40
ids = partial(random_ids, high=120)  # this file's inputs stay below id 120


def test_cam_merges_each_evicted_value_into_the_next_kept_ones(llama_pair):
    model, ref = llama_pair
    x, m = ids(1, T), 4
    c = compress(model, None, x, "cam", keep=0.5, base="h2o", merge=m, sample=False)
    pre = prefill(model, None, x)
    with torch.no_grad():
        attn = ref(input_ids=x, output_attentions=True).attentions
    for full, layer, a in zip(pre.cache.sieve_layers, c.cache.sieve_layers, attn, strict=True):
        s = a[0].double().sum(1).view(2, 2, T).mean(1)  # h2o: attention summed over the queries, GQA mean [Hkv, T]
        for h in range(2):
            kept = layer.token_index[0, h].tolist()
            want = full.values[0, h, kept].double().clone()
            for e in sorted(set(range(T)) - set(kept)):
                after = [i for i, j in enumerate(kept) if j > e][:m]
                if not after:
                    continue
                p = min(1.0, float(s[h, e] / s[h, [kept[i] for i in after]].mean()))
                for i in after:
                    want[i] += p * full.values[0, h, e].double() / m
            torch.testing.assert_close(layer.values[0, h].double(), want, atol=1e-5, rtol=1e-4)
        kept_keys = full.keys.gather(2, layer.token_index[..., None].expand(-1, -1, -1, 16))
        assert torch.equal(layer.keys, kept_keys)  # keys unchanged


def test_cam_draws_are_seeded_and_all_or_nothing(llama_pair):
    model, _ = llama_pair
    x = ids(2, T)
    a = compress(model, None, x, "cam", keep=0.5, base="h2o", seed=3)
    b = compress(model, None, x, "cam", keep=0.5, base="h2o", seed=3)
    plain = compress(model, None, x, "h2o", keep=0.5)
    for la, lb, lp in zip(a.cache.sieve_layers, b.cache.sieve_layers, plain.cache.sieve_layers, strict=True):
        assert torch.equal(la.values, lb.values)
        assert torch.equal(la.token_index, lp.token_index)  # cam's selection is its base's


def test_qfilter_needs_its_calibration_then_scores_by_the_filters(llama_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_CALIBRATION", str(tmp_path))
    model, ref = llama_pair
    with pytest.raises(CalibrationError, match=r"tokensieve calibrate .*--learned qfilter") as err:
        compress(model, None, ids(3, T), "qfilter", keep=0.5)
    assert "\n" not in str(err.value)
    record = calibrate_offline(model, None, "qfilter")
    assert record["calibration_tokens"] == 1024 and record["shape"] == [3, 2, 2, 16]
    # the oracle: the calibration prefill's pre-RoPE queries (q_proj's output), their top singular vector
    cal = torch.randint(3, 128, (1, 1024), generator=torch.Generator().manual_seed(1))
    q, k = {}, {}
    hooks = []
    for i, layer in enumerate(ref.model.layers):
        hooks.append(layer.self_attn.q_proj.register_forward_hook(lambda mod, a, o, i=i: q.__setitem__(i, o[0])))
        hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda mod, a, o, i=i: k.__setitem__(i, o[0])))
    with torch.no_grad():
        ref(input_ids=cal)
    method = get_method("qfilter")
    method.bind(model)
    filters = method._filters
    for i in range(3):
        qs = q[i].view(1024, 4, 16).transpose(0, 1).double()  # [Hq, n, D]
        for hq in range(4):
            u = torch.linalg.svd(qs[hq]).Vh[0]
            got = filters[i, hq // 2, hq % 2].double()
            assert abs(float(got @ u)) > 0.999 and float((qs[hq] @ got).mean()) > 0
    x = ids(4, T)
    with torch.no_grad():
        ref(input_ids=x)
    pre = prefill(model, None, x)
    for h in hooks:
        h.remove()
    for layer in pre.cache.sieve_layers:
        i = layer.layer_idx
        keys = k[i].view(T, 2, 16).transpose(0, 1).double()  # pre-RoPE [Hkv, T, D]
        want = torch.einsum("htd,hgd->ht", keys, filters[i].double()) / 2
        got = method.score(ScoreInputs(layer.keys, layer.values, None, None, i, 3))
        torch.testing.assert_close(got[0].double(), want, atol=1e-4, rtol=1e-4)
    c = compress(model, None, x, "qfilter", keep=0.5)
    assert abs(c.stats.ratio - 0.5) < 0.05


def test_lukv_curves_are_the_hull_of_the_future_attention_share():
    from tokensieve.kv.budget.lukv import concave_hull, utility_curves
    from tokensieve.kv.learned import HeadSample

    torch.manual_seed(0)
    n, d = 24, 8
    q, k = torch.randn(1, 2, n, d), torch.randn(1, n, d)
    got = utility_curves([HeadSample(q, torch.arange(n), k, 0.5)], points=4, chunk=5)[0, 0]
    logits = torch.einsum("gqd,td->gqt", q[0].double(), k[0].double()) * 0.5
    logits = logits.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    mass = logits.softmax(-1)[:, n // 2 :, : n // 2].sum((0, 1))  # the second half's attention to the first half
    top = mass.sort(descending=True).values.cumsum(0) / mass.sum()
    raw = [0.0] + [float(top[round(i * 12 / 4) - 1]) for i in range(1, 5)]
    want = concave_hull(torch.tensor(raw))
    torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-5)
    hull = concave_hull(torch.tensor([0.0, 0.1, 0.5, 0.6, 1.0]))  # chords over the dents
    torch.testing.assert_close(hull, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_lukv_spends_the_steps_where_the_curves_gain_most():
    import itertools

    from tokensieve.kv import get_allocator

    alloc = get_allocator("lukv", points=4)
    f = torch.linspace(0, 1, 5)
    alloc._curves = torch.stack([torch.stack([1 - (1 - f) ** a for a in (1.0, 3.0)]),
                                 torch.stack([1 - (1 - f) ** a for a in (6.0, 2.0)])])  # fmt: skip
    for keep in (0.25, 0.5, 0.75):
        share = alloc.shares(keep)
        counts = (share * 4).round().long().flatten().tolist()
        steps = round(keep * 16)
        assert sum(counts) == steps
        value = lambda c: sum(float(alloc._curves.flatten(0, 1)[i, c[i]]) for i in range(4))  # noqa: E731
        best = max(value(c) for c in itertools.product(range(5), repeat=4) if sum(c) == steps)
        assert abs(value(counts) - best) < 1e-6


def test_lukv_needs_its_curves_then_meets_the_budget(llama_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_CALIBRATION", str(tmp_path))
    model, _ = llama_pair
    with pytest.raises(CalibrationError, match=r"--learned lukv") as err:
        compress(model, None, ids(5, T), "snapkv", keep=0.5, allocator="lukv")
    assert "\n" not in str(err.value)
    assert calibrate_offline(model, None, "lukv")["shape"] == [3, 2, 17]
    c = compress(model, None, ids(5, T), "snapkv", keep=0.5, allocator="lukv")
    assert abs(c.stats.ratio - 0.5) <= 0.02 + 1 / T
