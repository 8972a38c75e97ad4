"""Issue 28 (second round): ``cam`` (evicted values merged into the next kept ones) and ``qfilter`` (calibrated
per-head filter directions), each against a direct formula on a tiny model."""

from __future__ import annotations

import pytest
import torch

import tokensieve as ts
from conftest import make_model, twin
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import CalibrationError
from tokensieve.kv import calibrate_offline, compress, get_method, prefill

T = 40


def ids(seed: int, n: int) -> torch.Tensor:
    return torch.randint(3, 120, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models():
    model = ts.prepare(make_model("llama"))
    ref = twin(model)
    ref.set_attn_implementation("eager")
    return model, ref


def test_cam_merges_each_evicted_value_into_the_next_kept_ones(models):
    model, ref = models
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


def test_cam_draws_are_seeded_and_all_or_nothing(models):
    model, _ = models
    x = ids(2, T)
    a = compress(model, None, x, "cam", keep=0.5, base="h2o", seed=3)
    b = compress(model, None, x, "cam", keep=0.5, base="h2o", seed=3)
    plain = compress(model, None, x, "h2o", keep=0.5)
    for la, lb, lp in zip(a.cache.sieve_layers, b.cache.sieve_layers, plain.cache.sieve_layers, strict=True):
        assert torch.equal(la.values, lb.values)
        assert torch.equal(la.token_index, lp.token_index)  # cam's selection is its base's


def test_qfilter_needs_its_calibration_then_scores_by_the_filters(models, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_CALIBRATION", str(tmp_path))
    model, ref = models
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
