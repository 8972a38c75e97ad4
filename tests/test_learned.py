"""The learned scorers (kvzap, fastkvzip; kv/learned.py, kv/learn.py): they fit planted targets, a scorer reloaded
from the store scores the same, a model with no trained scorer gets a one-line error naming the command, the
training corpus never touches the benchmark's haystacks, and the attention input they read is the norm's output."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from tokensieve.errors import BudgetError, CalibrationError
from tokensieve.kv import compress, get_method
from tokensieve.kv.learn import fit_gate, fit_mlp, fit_ridge, train
from tokensieve.kv.learned import HAYSTACK_SOURCES, forget, gate, load_scorer, training_texts


def _planted(n: int, d: int, h: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, h, generator=g)
    return x, w


def test_ridge_recovers_a_planted_linear_map():
    x, w = _planted(600, 8, 2, 0)
    y = x @ w + 0.5
    x1 = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    p, fig = fit_ridge(x1.T @ x1, x1.T @ y.double(), x[:100], y[:100], alphas=(1e-8,))
    assert torch.allclose(p["w"], w, atol=1e-4) and torch.allclose(p["b"], torch.full((2,), 0.5), atol=1e-4)
    assert fig["val_r"] > 0.9999


def test_mlp_fits_a_planted_nonlinear_target():
    x, w = _planted(2000, 6, 2, 1)
    y = torch.tanh(0.4 * x @ w)
    _, fig = fit_mlp(x[:1600], y[:1600], x[1600:], y[1600:], hidden=64, epochs=40, lr=3e-3)
    base = float(((y[1600:] - y[:1600].mean(0)) ** 2).mean())
    assert fig["val_mse"] < 0.2 * base and fig["val_r"] > 0.95


def test_gate_fits_targets_made_by_a_planted_gate():
    g = torch.Generator().manual_seed(2)
    d, h, groups = 12, 2, 2
    planted = {"wq": torch.randn(d, h * groups * 4, generator=g), "wk": torch.randn(d, h * 4, generator=g),
               "sinks": torch.randn(h, 3, 4, generator=g), "tau": torch.zeros(h)}  # fmt: skip
    x = torch.randn(3000, d, generator=g)
    s = gate(planted, x[None])[0]  # [n, H] in (0, 1)
    _, fig = fit_gate(x[:2400], s[:2400], x[2400:], s[2400:], groups, dim=4, n_sinks=3, epochs=30, lr=1e-2)
    assert fig["val_r"] > 0.9


def test_gate_oracle_is_a_softmax_against_sinks():
    g = torch.Generator().manual_seed(3)
    p = {"wq": torch.randn(5, 2 * 1 * 4, generator=g), "wk": torch.randn(5, 2 * 4, generator=g),
         "sinks": torch.randn(2, 3, 4, generator=g), "tau": torch.tensor([0.0, 0.3])}  # fmt: skip
    x = torch.randn(1, 7, 5, generator=g)
    out = gate(p, x)

    def rn(v):
        return v / v.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    for t in range(7):
        for head in range(2):
            q = rn(x[0, t] @ p["wq"][:, head * 4 : head * 4 + 4])
            k = rn(x[0, t] @ p["wk"][:, head * 4 : head * 4 + 4])
            scale = float(p["tau"][head].exp()) / 2.0
            logits = [float(q @ k) * scale] + [float(q @ rn(sk)) * scale for sk in p["sinks"][head]]
            e = torch.tensor(logits).exp()
            assert float(out[0, t, head]) == pytest.approx(float(e[0] / e.sum()), rel=1e-4)


def test_haystack_sources_are_refused():
    with pytest.raises(CalibrationError, match="haystacks"):
        training_texts(None, 2, 64, sources=(HAYSTACK_SOURCES[-1],))


def test_no_trained_scorer_names_the_command():
    forget()
    model = make_model("llama", seed=11)
    with pytest.raises(CalibrationError, match=r"tokensieve calibrate --model .* --learned kvzap") as e:
        compress(model, None, torch.randint(3, 100, (1, 40)), "kvzap", keep=0.5)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method,extra", [("kvzap", {}), ("kvzap", {"regressor": "mlp"}), ("fastkvzip", {}),
                                          ("kvzap", {"scope": "layer"})])  # fmt: skip
def test_trained_scorer_reloads_and_scores_the_same(method, extra):
    forget()
    model = make_model("llama", seed=12)
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, 100, (1, 48), generator=g) for _ in range(4)]
    train(model, None, (method,), contexts=contexts, val=1, rows=32, epochs=2)
    ctx = torch.randint(3, 100, (1, 40), generator=g)
    first = compress(model, None, ctx, method, keep=0.5, **extra)
    forget()  # from the store, not memory
    form = extra.get("regressor", "gate" if method == "fastkvzip" else "ridge")
    assert load_scorer(model, form).meta["train_tokens"] == 3 * 48
    second = compress(model, None, ctx, method, keep=0.5, **extra)
    for a, b in zip(first.cache.sieve_layers, second.cache.sieve_layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert first.stats.kv_bytes < first.stats.kv_bytes_full


def test_layer_input_is_the_pre_attention_norm_output():
    from tokensieve.core.observe.capture import Needs
    from tokensieve.kv import prefill

    model = make_model("llama", seed=13)
    ids = torch.randint(3, 100, (1, 20))
    pre = prefill(model, None, ids, needs=Needs(layer_input=True))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for i, layer in enumerate(model.model.layers):
        expected = layer.input_layernorm(out.hidden_states[i])
        assert torch.allclose(pre.observations[i].layer_input, expected, atol=1e-5)


def test_duo_attention_mass_oracle_and_split():
    from types import SimpleNamespace

    from tokensieve.kv.methods.duo_attention import distant_mass

    g = torch.Generator().manual_seed(5)
    h, grp, t, d = 2, 2, 12, 4
    q, k = torch.randn(h, grp, t, d, generator=g), torch.randn(h, t, d, generator=g)
    sample = SimpleNamespace(queries=q, rows=torch.arange(t), keys=k, scaling=0.5)
    got = distant_mass([sample], sinks=2, recent=3, block=5)[0]
    want = torch.zeros(h)
    n = 0
    for i in range(5, t):  # rows that see past sinks + recent
        n += 1
        for head in range(h):
            for gi in range(grp):
                logits = torch.tensor([float(q[head, gi, i] @ k[head, j]) * 0.5 for j in range(i + 1)])
                p = logits.softmax(0)
                want[head] += float(p[2 : i - 3 + 1].sum()) / grp
    torch.testing.assert_close(got, want / n, atol=1e-5, rtol=1e-5)

    model = make_model("llama", seed=14)
    ids = torch.randint(3, 100, (1, 64))
    c = compress(model, None, ids, "duo_attention", keep=0.5, recent=8, sinks=2, calibration_tokens=64)
    held = [layer for layer in c.cache.sieve_layers]
    counts = torch.cat([torch.as_tensor(layer.tokens_per_head()).flatten() for layer in held])
    assert c.stats.kv_bytes / c.stats.kv_bytes_full == pytest.approx(0.5, abs=0.01)  # the boundary head fills it
    assert counts.numel() > 0


def test_duo_attention_streams_the_least_distant_heads_and_the_boundary_head_fills_the_budget():
    m = get_method("duo_attention", sinks=2, recent=8)
    mass = torch.tensor([[0.5, 0.1, 0.9], [0.3, 0.2, 0.8]])  # heads by distant mass: 0.1, 0.2, 0.3, 0.5, 0.8, 0.9
    # n = 100, budget 60 per head: 6 x 40 = 240 slots to free; a streaming head frees 90: two stream (0.1, 0.2),
    # the next (0.3) frees the other 60 and keeps 40; the rest keep all 100
    want = torch.tensor([[100, 10, 100], [40, 10, 100]])
    assert torch.equal(m.head_counts(100, 60, mass), want)
    assert int(m.head_counts(100, 60, mass).sum()) == 60 * 6
    assert torch.equal(m.head_counts(100, 100, mass), torch.full((2, 3), 100))
    with pytest.raises(BudgetError, match="no longer than sinks"):
        m.head_counts(10, 5, mass)


def test_calibrate_learned_bad_input_is_one_line(capsys):
    from tokensieve.cli import main

    assert main(["calibrate", "--learned", "nope"]) == 2
    assert main(["calibrate", "--learned", "kvzap", "--texts", "4", "--val", "4"]) == 2
    err = capsys.readouterr().err
    assert "choose from kvzap, fastkvzip" in err and "--val 4" in err


def test_calibrate_json_keeps_the_offline_calibrations_beside_the_trained_scorers(monkeypatch, capsys):
    import json
    from types import SimpleNamespace

    import tokensieve.kv as kv
    import tokensieve.runtime.models as models
    from tokensieve.cli import main

    monkeypatch.setattr(models, "load_model", lambda name: (None, None))
    monkeypatch.setattr(kv, "calibrate_offline", lambda model, tok, m: {"method": m, "seconds": 1.0})
    scorer = SimpleNamespace(meta={"form": "ridge", "train_tokens": 10, "layers": []}, key="k")
    monkeypatch.setattr(kv, "train_learned", lambda *a, **k: {"kvzap": scorer})
    assert main(["calibrate", "--learned", "qfilter,kvzap", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r.get("method", r.get("form")) for r in rows] == ["qfilter", "ridge"]  # neither record is dropped


def _rope_matrix(angles: torch.Tensor) -> torch.Tensor:
    """The explicit rotate-half RoPE matrix [D, D] for angles [D/2] (pairs i and i + D/2)."""
    half = angles.numel()
    r = torch.zeros(2 * half, 2 * half)
    for i, a in enumerate(angles.tolist()):
        c, s = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
        r[i, i], r[i, i + half], r[i + half, i], r[i + half, i + half] = c, -s, s, c
    return r


def test_expected_attention_stats_oracle():
    from types import SimpleNamespace

    from tokensieve.core.observe.capture import LayerObservation
    from tokensieve.core.observe.inputs import ScoreInputs
    from tokensieve.kv.methods.expected_attention_stats import ExpectedAttentionStats, query_stats

    g = torch.Generator().manual_seed(9)
    h, grp, n, d, t = 1, 2, 6, 4, 5
    inv = torch.tensor([1.0, 0.1])
    pre = torch.randn(h, grp, n, d, generator=g)  # the pre-RoPE queries the oracle starts from
    rows = torch.arange(10, 10 + n)
    post = torch.stack([pre[:, :, i] @ _rope_matrix(int(r) * inv).T for i, r in enumerate(rows)], 2)
    st = query_stats([SimpleNamespace(queries=post, rows=rows)], inv)[0]
    torch.testing.assert_close(st[..., -1], pre.mean(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st[..., :-1], torch.stack([torch.stack([torch.cov(pre[0, j].T)]) for j in range(grp)], 1)
                               , atol=1e-5, rtol=1e-5)  # fmt: skip

    m = ExpectedAttentionStats(horizon=0)
    m._stats, m._inv_freq, m._rows = st[None], inv, {0: 0}
    keys, values = torch.randn(1, h, t, d, generator=g), torch.randn(1, h, t, d, generator=g)
    obs = LayerObservation(torch.zeros(1, h, grp, 0, d), torch.zeros(0, dtype=torch.long), 0, {}, 0.5)
    got = m.score(ScoreInputs(keys, values, None, obs))
    rot = _rope_matrix(t * inv)
    want = torch.zeros(1, h, t)
    for j in range(grp):
        mu, cov = rot @ pre[0, j].mean(0), rot @ torch.cov(pre[0, j].T) @ rot.T
        logits = torch.tensor([0.5 * float(mu @ k) + 0.125 * float(k @ cov @ k) for k in keys[0, 0]])
        want[0, 0] += logits.softmax(0) / grp
    torch.testing.assert_close(got, want * values.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_expected_attention_stats_compresses_from_its_calibration():
    model = make_model("llama", seed=15)
    c = compress(model, None, torch.randint(3, 100, (1, 48)), "expected_attention_stats", keep=0.5,
                 calibration_tokens=64)  # fmt: skip
    assert c.stats.kv_bytes == pytest.approx(0.5 * c.stats.kv_bytes_full, rel=0.05)


def test_missing_training_corpora_are_named_together(monkeypatch, tmp_path):
    """Both Debian sources missing: one error names both packages (not one per run)."""
    from tokensieve.runtime import corpus

    monkeypatch.setitem(corpus.DEBIAN_PACKAGES, "python-docs", (tmp_path / "nope", "python3.11-doc"))
    monkeypatch.setitem(corpus.DEBIAN_PACKAGES, "debian-reference", (tmp_path / "nope.gz", "debian-reference-en"))
    with pytest.raises(FileNotFoundError, match=r"apt-get install python3\.11-doc debian-reference-en$"):
        corpus.documents.__wrapped__(("essays", "python-docs", "debian-reference"))
    corpus.documents.cache_clear()
    corpus.prose_paragraphs.cache_clear()
    with pytest.raises(CalibrationError, match=r"python3\.11-doc debian-reference-en"):
        training_texts(None, 2, 64, sources=("python-docs", "debian-reference"))
