"""Question-unseen scores (issue 12): each rule against an oracle written from full matrices / full logits."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, twin
from tokensieve import prepare
from tokensieve.core.observe.full import reconstruction_scores, token_nll
from tokensieve.errors import BudgetError, EmptyContextError, ParameterError
from tokensieve.kv import Plan, compress, get_method, prefill

T = 37


def _ids(seed: int = 0, t: int = T, vocab: int = 128) -> torch.Tensor:
    return torch.randint(1, vocab, (1, t), generator=torch.Generator().manual_seed(seed))


def kvzip_oracle(model, ids: torch.Tensor, prompt: list[int], chunk: int, stride: int = 1) -> dict[int, torch.Tensor]:
    """For each chunk, the plain (eager) model on context + prompt + chunk; max of the full attention matrix over
    the chunk's rows (every stride-th) and over each GQA group, on the context's columns."""
    ref = twin(model)
    ref.set_attn_implementation("eager")
    cfg = ref.config
    n_kv, h = cfg.num_key_value_heads, cfg.num_attention_heads
    t = ids.shape[1]
    out: dict[int, torch.Tensor] = {}
    for lo in range(0, t, chunk):
        piece = ids[:, lo : lo + chunk]
        seq = torch.cat([ids, torch.tensor([prompt], dtype=torch.long), piece], -1)
        with torch.no_grad():
            att = ref(input_ids=seq, output_attentions=True).attentions
        first = seq.shape[1] - piece.shape[1]
        for i, a in enumerate(att):  # [1, H, L, L]
            rows = a[:, :, first::stride, :t]
            s = rows.amax(2).view(1, n_kv, h // n_kv, t).amax(2)
            out[i] = torch.maximum(out[i], s) if i in out else s
    return out


@pytest.mark.parametrize("chunk,stride", [(64, 1), (10, 1), (10, 3)])
def test_kvzip_is_max_reconstruction_attention(chunk, stride):
    model = prepare(make_model("llama"))
    ids = _ids()
    prompt = [5, 6, 7]
    pre = prefill(model, None, ids)
    got = reconstruction_scores(model, pre.cache, ids, None, prompt, chunk=chunk, stride=stride, query_chunk=4)
    want = kvzip_oracle(model, ids, prompt, chunk, stride)
    assert set(got) == set(want)
    for i in want:
        torch.testing.assert_close(got[i], want[i], atol=2e-5, rtol=1e-4)
    assert pre.cache.layers[0].n_held == T  # the pass ran on forks: the prefilled cache is unchanged


def test_kvzip_plus_weights_by_value_norm_and_keeps_the_top():
    model = prepare(make_model("llama"))
    ids = _ids(1)
    pre = prefill(model, None, ids, methods=["kvzip"])
    base = get_method("kvzip").whole_pass(pre)
    c = pre.compress("kvzip+", keep=0.5, scope="layer")
    layer = c.cache.layers[0]
    v = pre.cache.layers[0].values
    want = (base[0][0] * v.norm(dim=-1)).topk(layer.n_held, dim=-1).indices.sort(-1).values
    assert torch.equal(layer.token_index, want)
    assert len(pre.memo) == 1  # kvzip and kvzip+ shared one reconstruction pass


def test_kvzip_global_scope_is_one_top_k_over_the_whole_cache():
    model = prepare(make_model("llama"))
    ids = _ids(7)
    pre = prefill(model, None, ids, methods=["kvzip"])
    c = pre.compress("kvzip", keep=0.3, scope="global")
    scores = get_method("kvzip").whole_pass(pre)
    layers = pre.cache.sieve_layers
    flat = torch.cat([scores[layer.layer_idx][0].flatten() for layer in layers])
    budget = round(0.3 * T)
    top = set(flat.topk(budget * len(layers) * 2).indices.tolist())
    held = 0
    for n, layer in enumerate(c.cache.sieve_layers):
        for h in range(2):
            idx = layer.segment(0, h)[2] if hasattr(layer, "segment") else layer.token_index[0, h]
            held += idx.numel()
            for j in idx.tolist():  # every kept slot is in the global top-k (no head was floored here)
                assert (n * 2 + h) * T + j in top
    assert held == budget * len(layers) * 2


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_kvzip_compress_equals_prefill_then_compress(scope):
    model = prepare(make_model("qwen2"))
    ids = _ids(2)
    a = compress(model, None, ids, "kvzip", keep=0.3, scope=scope)
    b = prefill(model, None, ids, methods=["kvzip"]).compress("kvzip", keep=0.3, scope=scope)
    for la, lb in zip(a.cache.sieve_layers, b.cache.sieve_layers, strict=True):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def test_kvzip_on_an_empty_context_is_a_clear_error():
    model = prepare(make_model("llama"))
    with pytest.raises(EmptyContextError):
        compress(model, None, torch.zeros(1, 0, dtype=torch.long), "kvzip", keep=0.5)
    pre = prefill(model, None, _ids())
    with pytest.raises(EmptyContextError):
        reconstruction_scores(model, pre.cache, torch.zeros(1, 0, dtype=torch.long), None, [])


def _kv(seed: int = 3, b: int = 2, hkv: int = 2, g: int = 2, t: int = 24, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(b, hkv, t, d, generator=gen)
    v = torch.randn(b, hkv, t, d, generator=gen)
    q = torch.randn(b, hkv * g, t, d, generator=gen) * 0.5 + 0.3
    return q, k, v


def test_keydiff_is_negative_cosine_to_the_mean_key():
    from tokensieve.core.observe.inputs import ScoreInputs

    _, k, v = _kv()
    got = get_method("keydiff").score(ScoreInputs(k, v, None, None))
    mean = k.mean(2)
    for b in range(k.shape[0]):
        for h in range(k.shape[1]):
            for j in range(k.shape[2]):
                want = -torch.dot(k[b, h, j], mean[b, h]) / (k[b, h, j].norm() * mean[b, h].norm())
                assert abs(float(got[b, h, j]) - float(want)) < 1e-5


def test_lagkv_normalises_each_chunk_by_the_next():
    from tokensieve.core.observe.inputs import ScoreInputs

    _, k, v = _kv(t=22)
    lag = 5
    got = get_method("lagkv", lag=lag).score(ScoreInputs(k, v, None, None))
    assert torch.isinf(got[..., 15:]).all() and torch.isfinite(got[..., :15]).all()  # no full next chunk: kept
    for c in range(3):
        part = []
        for x in (k, v):
            ref = x[:, :, (c + 1) * lag : (c + 2) * lag]
            lo, hi = ref.amin(2, keepdim=True), ref.amax(2, keepdim=True)
            norm = (x[:, :, c * lag : (c + 1) * lag] - lo) / (hi - lo)
            part.append(torch.softmax(norm.std(-1), -1))
        torch.testing.assert_close(got[..., c * lag : (c + 1) * lag], part[0] + part[1])


def test_expected_attention_matches_monte_carlo():
    from tokensieve.core.observe.capture import Needs, observe
    from tokensieve.core.observe.inputs import ScoreInputs

    q, k, v = _kv(t=12)
    m = get_method("expected_attention", queries=12, sinks=0)  # not bound: no RoPE rotation
    scale = 8**-0.5
    x = ScoreInputs(k, v, None, observe(Needs(window=12), q, k, None, scale))
    got = m.score(x)
    # Monte Carlo: queries drawn from the window's Gaussian; E[exp(s q.k)], normalised over keys, group mean
    qg = q.view(2, 2, 2, 12, 8)
    mu, cov = (
        qg.mean(3),
        torch.stack([torch.stack([torch.cov(qg[b, h, i].T) for i in range(2)]) for b in range(2) for h in range(2)]),
    )
    dist = torch.distributions.MultivariateNormal(mu.reshape(-1, 8), cov.reshape(-1, 8, 8))
    draws = dist.sample((200_000,)).view(-1, 2, 2, 2, 8)  # [N, B, Hkv, G, D]
    e = torch.exp(torch.einsum("nbhgd,bhtd->nbhgt", draws, k) * scale).mean(0)
    want = (e / e.sum(-1, keepdim=True)).mean(2) * v.norm(dim=-1)
    torch.testing.assert_close(got, want, rtol=0.03, atol=1e-3)


def test_expected_attention_rotation_is_rope():
    from tokensieve.kv.methods.expected_attention import rotate

    q = torch.randn(3, 8)
    inv = torch.tensor([1.0, 0.1, 0.01, 0.001])
    # rotating by a then b equals rotating by a + b, and the rotation keeps norms (a RoPE rotation)
    a, b = rotate(rotate(q, 3 * inv), 5 * inv), rotate(q, 8 * inv)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=-1), q.norm(dim=-1))


def test_expected_attention_rotates_to_future_positions_with_real_rope():
    """The queries' rotation to the context's end and the mean over the next ``horizon`` positions, against a direct
    formula in complex numbers (RoPE's half-split pairs (a, b) as a + ib, rotated by e^{i pos inv_freq}), with the
    rotary frequencies a Llama model really carries (theta 1e5, head dim 64, SmolLM2's)."""
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokensieve.core.observe.capture import Needs, observe
    from tokensieve.core.observe.inputs import ScoreInputs

    b, hkv, g, t, d, n, horizon, theta = 1, 2, 2, 40, 64, 16, 512, 1e5
    cfg = LlamaConfig(vocab_size=16, hidden_size=256, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=hkv * g, num_key_value_heads=hkv, head_dim=d, rope_theta=theta,
                      rope_parameters={"rope_type": "default", "rope_theta": theta})  # fmt: skip
    m = get_method("expected_attention", queries=n, sinks=0, horizon=horizon)
    m.bind(LlamaForCausalLM(cfg))
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    np.testing.assert_allclose(m._inv_freq.numpy(), inv, rtol=1e-5)  # the model's own buffer: real frequencies
    q, k, v = _kv(b=b, hkv=hkv, g=g, t=t, d=d)
    scale = d**-0.5
    got = m.score(ScoreInputs(k, v, None, observe(Needs(window=n), q, k, None, scale)))

    rows = np.arange(t - n, t)  # the observed queries' positions
    qs = q.double().numpy().reshape(b, hkv, g, t, d)[..., rows, :]
    z = qs[..., : d // 2] + 1j * qs[..., d // 2 :]
    z = z * np.exp(1j * (t - rows)[:, None] * inv)  # each query moved from its position to position t
    real = np.concatenate([z.real, z.imag], -1)  # [b, hkv, g, n, d]
    zmu = z.mean(-2) * np.exp(1j * np.arange(horizon)[:, None] * inv).mean(0)  # mean over positions t .. t+511
    mu = np.concatenate([zmu.real, zmu.imag], -1)
    dev = real - real.mean(-2, keepdims=True)
    cov = np.einsum("bhgnd,bhgne->bhgde", dev, dev) / (n - 1)
    kk = k.double().numpy()
    logit = scale * np.einsum("bhgd,bhtd->bhgt", mu, kk) + 0.5 * scale**2 * np.einsum("bhtd,bhgde,bhte->bhgt", kk,
                                                                                      cov, kk)  # fmt: skip
    p = np.exp(logit - logit.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)).mean(2) * np.linalg.norm(v.double().numpy(), axis=-1)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-4, atol=1e-7)


def test_token_nll_equals_full_logits_nll():
    model = prepare(make_model("llama"))
    ids = _ids(4)
    pre = prefill(model, None, ids, methods=["surprise"])
    got = token_nll(model, pre.hidden, ids, chunk=7)  # chunked
    with torch.no_grad():
        logits = twin(model)(input_ids=ids).logits  # the oracle: the full [T, vocab] logits
    want = -torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(got[0, 1:], want, atol=1e-4, rtol=1e-4)
    assert float(got[0, 0]) == float(got[0, 1:].max())  # the first token is kept as a sink


def test_surprise_local_and_mix():
    model = prepare(make_model("llama"))
    ids = _ids(5)
    pre = prefill(model, None, ids, methods=["surprise", "keydiff"])
    nll = token_nll(model, pre.hidden, ids)
    layer = pre.cache.sieve_layers[0]
    full = get_method("surprise", local=5).whole_pass(pre)[layer.layer_idx][0]
    pad = torch.nn.functional.pad(nll[:, None], (2, 2), mode="replicate")[:, 0]
    torch.testing.assert_close(full, nll - pad.unfold(-1, 5, 1).mean(-1))
    c = pre.compress("surprise", keep=0.5)
    want = nll.topk(c.cache.sieve_layers[0].n_held, -1).indices.sort(-1).values
    assert torch.equal(c.cache.sieve_layers[0].token_index[:, 0], want)
    mixed = pre.compress("surprise", keep=0.5, mix="keydiff", weight=0.0)  # all weight on keydiff
    kd = pre.compress("keydiff", keep=0.5)
    for a, b in zip(mixed.cache.sieve_layers, kd.cache.sieve_layers, strict=True):
        assert torch.equal(a.token_index, b.token_index)


class _Tok:
    """A tokenizer stand-in: each id decodes to a fixed piece."""

    all_special_ids = (0,)

    def __init__(self, pieces):
        self.pieces = pieces

    def batch_decode(self, rows):
        return [self.pieces[r[0]] for r in rows]


def test_unit_ids_follow_word_boundaries():
    from tokensieve.core.ops.spans import unit_ids

    pieces = ["<s>", " The", " code", " is", " 7", "4", "2", "3", ".", " ok"]
    tok = _Tok(pieces)
    ids = torch.arange(len(pieces))[None]
    assert unit_ids(tok, ids, "word").tolist() == [[0, 1, 2, 3, 4, 4, 4, 4, 4, 5]]
    assert unit_ids(tok, ids, "alnum").tolist() == [[0, 1, 2, 3, 4, 4, 4, 4, 5, 6]]
    assert unit_ids(tok, ids, "word", max_len=2).tolist() == [[0, 1, 2, 3, 4, 4, 5, 5, 6, 7]]


@pytest.mark.parametrize("budget", [1, 3, 5, 8, 13])
def test_select_units_never_splits_and_never_exceeds(budget):
    from tokensieve.core.ops.spans import select_units

    g = torch.Generator().manual_seed(budget)
    units = torch.tensor([[0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 4, 5, 6, 6, 7, 8]])
    scores = torch.rand(1, 3, units.shape[1], generator=g)
    order, counts = select_units(scores, units, budget)
    size = torch.bincount(units[0])
    for h in range(3):
        kept = set(order[0, h, : counts[0, h]].tolist())
        assert len(kept) == int(counts[0, h]) <= budget
        for u in range(int(units.max()) + 1):
            members = set((units[0] == u).nonzero().flatten().tolist())
            assert members <= kept or not (members & kept)  # whole or nothing
        # greedy: the best unit that fits is always kept
        best = scores[0, h].new_full((9,), -1.0).scatter_reduce(0, units[0], scores[0, h], "amax")
        fits = [u for u in best.argsort(descending=True).tolist() if size[u] <= budget]
        assert set((units[0] == fits[0]).nonzero().flatten().tolist()) <= kept


def test_span_rule_needs_a_tokenizer():
    from tokensieve.errors import ParameterError

    model = prepare(make_model("llama"))
    with pytest.raises(ParameterError, match="tokenizer"):
        compress(model, None, _ids(), "span", keep=0.5, inner="keydiff")


def test_span_with_a_tokenizer_keeps_whole_units():
    from tokensieve.core.ops.spans import unit_ids

    model = prepare(make_model("llama"))
    pieces = ["<s>"] + [(" " if i % 3 == 0 else "") + "ab"[i % 2] for i in range(1, 128)]
    tok = _Tok(pieces)
    ids = _ids(6)
    pre = prefill(model, tok, ids, methods=[get_method("span", inner="keydiff")])
    c = pre.compress("span", keep=0.4, inner="keydiff")
    units = unit_ids(tok, ids)[0]
    for layer in c.cache.sieve_layers:
        for h in range(layer.keys.shape[1]):
            idx = layer.segment(0, h)[2] if hasattr(layer, "segment") else layer.token_index[0, h]
            kept = set(idx.tolist())
            assert len(kept) <= round(0.4 * T)
            for u in set(units[list(kept)].tolist()):
                assert set((units == u).nonzero().flatten().tolist()) <= kept


def test_mixed_precision_takes_a_reconstruction_score_as_importance():
    from tokensieve.kv import MixedLayer

    model = prepare(make_model("llama"))
    ids = _ids(8)
    pre = prefill(model, None, ids, methods=["kvzip"])
    c = pre.compress("mikv", keep=0.25, importance="kvzip", group=16)
    assert all(isinstance(layer, MixedLayer) for layer in c.cache.sieve_layers)
    assert c.stats.kv_bytes < pre.cache.kv_bytes()
    ev = pre.compress("kvzip", keep=0.25, scope="layer")  # mikv ranks per layer
    for mixed, evicted in zip(c.cache.sieve_layers, ev.cache.sieve_layers, strict=True):
        assert torch.equal(mixed.token_index, evicted.token_index)  # full precision: kvzip's kept tokens
        assert mixed.tiers[0].index.shape[-1] == T - evicted.n_held  # every other token stays, quantized


def test_mixed_precision_at_equal_bytes_holds_the_keep_share_of_the_bytes():
    model = prepare(make_model("llama"))
    ids = _ids(8)
    pre = prefill(model, None, ids, methods=["kvzip"])
    for keep in (0.5, 0.25):
        c = pre.compress("mikv", keep=keep, importance="kvzip", group=16, budget_of="bytes")
        assert c.stats.kv_bytes / pre.cache.kv_bytes() == pytest.approx(keep, abs=0.02)
    with pytest.raises(BudgetError):  # below what INT2 alone holds
        pre.compress("mikv", keep=0.05, importance="kvzip", group=16, lo_bits=4, budget_of="bytes")


def test_kvzip_in_bfloat16_ranks_like_fp32():
    model = prepare(make_model("llama"))
    ids = _ids(8)
    pre = prefill(model, None, ids, methods=["kvzip"])
    a = get_method("kvzip", precision="fp32").whole_pass(pre)
    b = get_method("kvzip", precision="bf16").whole_pass(pre)
    assert len(pre.memo) == 2  # a pass of its own, not fp32's memo
    for i in a:
        x, y = a[i][0].flatten(), b[i][0].flatten()
        torch.testing.assert_close(y, x, atol=2e-2, rtol=5e-2)
        k = x.numel() // 4
        overlap = len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist())) / k
        assert overlap >= 0.8  # a random tiny model has near-ties; SmolLM2 at 2k: 99.5% (docs/unseen.md)
    with pytest.raises(ParameterError):
        get_method("kvzip", precision="fp8")


@pytest.mark.parametrize("allocator", ["pyramid", "adakv", "zipvl"])
def test_a_global_budget_refuses_an_allocator_it_would_ignore(allocator):
    with pytest.raises(BudgetError, match="scope=layer"):
        compress(prepare(make_model("llama")), None, _ids(1), "kvzip", keep=0.25, allocator=allocator)
    with pytest.raises(BudgetError, match="scope=layer"):  # kvzip+ spends the same global budget
        Plan.make("kvzip+", keep=0.25, allocator=allocator)
    Plan.make("kvzip", keep=0.25, allocator=allocator, scope="layer")  # per layer: the allocator decides
    Plan.make("mikv", keep=0.25, allocator="pyramid", importance="kvzip")  # mikv ranks per layer


def test_the_cli_refuses_a_global_budget_with_an_allocator_in_one_line(capsys):
    from tokensieve.cli import main

    argv = ["generate", "--method", "kvzip", "--allocator", "pyramid", "--keep", "0.25", "--context", "x"]
    assert main([*argv, "--question", "y"]) == 2
    err = capsys.readouterr().err.strip()
    assert "scope=layer" in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_a_global_budget_holds_the_keep_share_of_the_bytes(keep):
    model = prepare(make_model("qwen2"))
    ids = _ids(5, t=96)
    c = prefill(model, None, ids, methods=["kvzip"]).compress("kvzip", keep=keep)
    assert c.stats.kv_bytes / c.stats.kv_bytes_full <= keep + 0.02


def test_kvzip_precision_auto_follows_the_devices_native_bf16(monkeypatch):
    from tokensieve.core.ops import precision

    auto = get_method("kvzip", precision="auto")
    assert get_method("kvzip").precision == "fp32"  # the default: padding-exact (tests/test_cache.py)
    assert get_method("kvzip", precision="fp32").precision_on("cpu") == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert auto.precision_on("cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert auto.precision_on("cpu") == "fp32"
    model = prepare(make_model("llama"))
    pre = prefill(model, None, _ids(8), methods=["kvzip"])
    auto.whole_pass(pre)
    assert [k[-1] for k in pre.memo] == ["fp32"]  # the pass ran in the resolved precision
