"""Issue 28's training-free scores, each against an oracle written from the formula or from dense attention on
small tensors (never the implementation's own helpers)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model, twin
from oracle import full_attention, group_mean
from test_unseen import kvzip_oracle
from tokensieve import prepare
from tokensieve.core.observe.capture import observe
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.kv import compress, get_method, prefill, prefill_inputs, score_prefill

B, H, HKV, T, D = 2, 4, 2, 40, 8
SCALE = D**-0.5
INV = 1.0 / (100.0 ** (torch.arange(0, D, 2).double() / D))  # the rotary frequencies of the fake model


@pytest.fixture(params=["nopad", "leftpad"])
def data(request):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64) * 2
    k = torch.randn(B, HKV, T, D, generator=g, dtype=torch.float64) * 2 + 0.5
    v = torch.randn(B, HKV, T, D, generator=g, dtype=torch.float64)
    valid = None
    if request.param == "leftpad":
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[1, :7] = False
    return q, k, v, valid


class RopeModel(torch.nn.Module):
    """What ``bind`` reads from a model with RoPE: a buffer named ``inv_freq``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("inv_freq", INV.float())


def rope_at(x, pos):
    """Rotate x [..., T, D] by positions pos [T]: channel c and c + D/2 form a pair turned by pos * INV[c]."""
    out = x.clone()
    half = D // 2
    for t, p in enumerate(pos.tolist()):
        for c in range(half):
            a, s = math.cos(p * INV[c].item()), math.sin(p * INV[c].item())
            x1, x2 = x[..., t, c], x[..., t, c + half]
            out[..., t, c], out[..., t, c + half] = x1 * a - x2 * s, x1 * s + x2 * a
    return out


def inputs(method, q, k, v, valid):
    obs = observe(method.needs(), q.float(), k.float(), valid, SCALE, max_chunk_bytes=1 << 30)
    return ScoreInputs(k.float(), v.float(), valid, obs)


def weights(valid):
    return torch.ones(B, T, dtype=torch.float64) if valid is None else valid.double()


def zscore(s, valid):
    w = weights(valid)[:, None]
    mean = (s * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    std = (((s - mean) * w) ** 2).sum(-1, keepdim=True).div(w.sum(-1, keepdim=True)).sqrt()
    return (s - mean) / std * w


def leverage_oracle(k0, valid, width, seed):
    """Leverage of centred pre-RoPE keys x the seeded sketch, by an explicit inverse of X'X."""
    phi = torch.randn(D, width, generator=torch.Generator().manual_seed(seed)).double() / width**0.5
    out = torch.zeros(B, HKV, T, dtype=torch.float64)
    for b in range(B):
        real = weights(valid)[b].bool()
        for h in range(HKV):
            kk = k0[b, h, real]
            x = (kk - kk.mean(0)) @ phi
            out[b, h, real] = torch.einsum("ti,ij,tj->t", x, torch.linalg.inv(x.T @ x), x)
    return out


def test_leverage_is_the_leverage_of_centred_pre_rope_keys(data):
    _, k0, v, valid = data
    m = get_method("leverage", width=4, jitter=1e-9)
    m.bind(RopeModel())
    x = ScoreInputs(rope_at(k0, torch.arange(T)).float(), v.float(), valid, None)  # the cache holds rotated keys
    got = m.score(x).double()
    want = leverage_oracle(k0, valid, 4, 0)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)  # padding: 0 in both
    assert torch.allclose(got.sum(-1), torch.full((B, HKV), 4.0, dtype=torch.float64), atol=1e-2)  # trace = rank


def each_row_alone(valid, fn, *xs):
    """``fn`` on each row's real tokens as an unpadded batch of one (a left-padded row must score as it does
    alone), put back in place; padding scores 0. ``xs`` are ``[B, H, T, ...]``."""
    out = None
    for b in range(B):
        real = weights(valid)[b].bool()
        got = fn(*(x[b : b + 1][:, :, real] for x in xs))[0]
        if out is None:
            out = torch.zeros(B, *got.shape[:-1], T, dtype=got.dtype)
        out[b][..., real] = got
    return out


def nca_oracle(q, k, v, valid, chunk, smooth):
    """Each row alone: dense bidirectional attention inside each chunk (full matrix per chunk), mass per key, GQA
    mean, x ||v||, then a centred moving average over ``smooth`` neighbours (edges: the neighbours that exist)."""

    def row(q, k, v):
        t = k.shape[2]
        kk = k.repeat_interleave(H // HKV, 1)
        mass = torch.zeros(1, H, t, dtype=torch.float64)
        for lo in range(0, t, chunk):
            hi = min(t, lo + chunk)
            mass[:, :, lo:hi] = (q[:, :, lo:hi] @ kk[:, :, lo:hi].transpose(-1, -2) * SCALE).softmax(-1).sum(2)
        s = group_mean(mass, HKV) * v.norm(dim=-1)
        half = smooth // 2
        return torch.stack([s[..., max(0, j - half) : j + half + 1].mean(-1) for j in range(t)], -1)

    return each_row_alone(valid, row, q, k, v)


def test_non_causal_attn_is_chunked_bidirectional_mass(data):
    q, k, v, valid = data
    m = get_method("non_causal_attn", chunk=16)
    got = m.score(inputs(m, q, k, v, valid)).double()
    torch.testing.assert_close(got, nca_oracle(q, k, v, valid, 16, 3), atol=1e-4, rtol=1e-4)


def test_compactor_blends_z_scores_by_the_removed_share(data):
    q, k, v, valid = data
    m = get_method("compactor", width=4, chunk=16)
    x = inputs(m, q, k, v, valid)
    lev = leverage_oracle(k, valid, 4, 0)  # no model bound: the keys are taken as they are
    nca = nca_oracle(q, k, v, valid, 16, 3)
    torch.testing.assert_close(m.score(x).double(), 0.5 * zscore(lev, valid) + zscore(nca, valid), atol=5e-3, rtol=5e-3)
    assert m.protected(20) == (8, 4)


def test_cur_is_windowed_key_and_value_norms(data):
    _, k, v, valid = data
    m = get_method("cur", group=16)
    got = m.score(ScoreInputs(k.float(), v.float(), valid, None)).double()

    def row(k, v):  # windows of 16 from the row's first real token
        k2, v2 = k.pow(2).sum(-1), v.pow(2).sum(-1)
        want = torch.zeros_like(k2)
        for j in range(k2.shape[-1]):
            lo = j // 16 * 16
            want[..., j] = k2[..., j] / k2[..., lo : lo + 16].sum(-1) * v2[..., j] / v2[..., lo : lo + 16].sum(-1)
        return want

    torch.testing.assert_close(got, each_row_alone(valid, row, k, v), atol=1e-5, rtol=1e-4)
    assert m.protected(10) == (4, 0)


@pytest.mark.parametrize("queries", [8, T])
def test_cap_is_anchor_weighted_value_leverage(data, queries):
    """One anchor per query head (its last ``queries`` real, non-sink queries), the score averaged over the heads
    sharing a key; the 4 sinks are protected and take no part in the max or in A (the paper and kvpress's
    CapPress; ``queries=T`` is kvpress's anchor over every query)."""
    q0, k, v, valid = data  # q0: pre-RoPE queries; the prefill sees them rotated to their positions
    m = get_method("cap", queries=queries, horizon=16)
    m.bind(RopeModel())
    x = inputs(m, rope_at(q0, torch.arange(T)), k, v, valid)
    got = m.score(x).double()
    want = torch.zeros(B, HKV, T, dtype=torch.float64)
    for b in range(B):
        real = weights(valid)[b].bool().nonzero().flatten().tolist()
        sinks, rest = real[:4], real[4:]
        history = [p for p in rest if p >= T - queries]
        for h in range(HKV):
            kk, vv = k[b, h, rest], v[b, h, rest]
            per_head = []
            for qh in range(h * (H // HKV), (h + 1) * (H // HKV)):
                mu = q0[b, qh, history].mean(0)
                anchor = torch.stack([rope_at(mu[None], torch.tensor([p]))[0] for p in range(T, T + 16)]).mean(0)
                cos = (kk @ anchor) / (kk.norm(dim=-1) * anchor.norm())
                w = torch.exp(5 * (cos - cos.max()))
                outer = (w[:, None, None] * vv[:, :, None] * vv[:, None]).sum(0)
                a_inv = torch.linalg.inv(torch.eye(D, dtype=torch.float64) + outer)
                per_head.append(w * torch.einsum("td,de,te->t", vv, a_inv, vv))
            want[b, h, rest] = torch.stack(per_head).mean(0)
            want[b, h, sinks] = float("inf")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_score_prefill_scores_a_method_bound_to_the_model():
    """``score_prefill`` binds the method as compressing does: cap's anchor is un-rotated with the model's rotary
    frequencies, so its score equals the one a hand-bound method gives (unbound, it scored without RoPE)."""
    model = prepare(make_model("llama"))
    ids = torch.randint(1, 128, (1, 24), generator=torch.Generator().manual_seed(2))
    pre = prefill(model, None, ids, methods=["cap"])
    bound = get_method("cap")
    bound.bind(model)
    want = {layer.layer_idx: bound.score(x) for layer, x in prefill_inputs(pre, bound)}
    got = score_prefill(pre, get_method("cap"))
    assert got.keys() == want.keys()
    for i in want:
        torch.testing.assert_close(got[i], want[i])


def test_finch_rescales_each_query_by_the_keys_it_sees(data):
    q, k, v, valid = data
    m = get_method("finch", window=6)
    got = m.score(inputs(m, q, k, v, valid)).double()
    a = full_attention(q, k, valid, SCALE)  # [B, H, T, T]
    seen = weights(valid).cumsum(-1)  # real keys query p sees
    rows = a[:, :, T - 6 :] * seen[:, None, T - 6 :, None]
    torch.testing.assert_close(got, group_mean(rows.mean(2), HKV), atol=1e-5, rtol=1e-4)


def test_simlayerkv_judges_the_last_query_mass_near_the_ends(data):
    q, k, v, valid = data
    a = full_attention(q, k, valid, SCALE)[:, :, -1]  # [B, H, T]
    near = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        real = weights(valid)[b].bool().nonzero().flatten()
        near[b, real[:3]] = True
        near[b, real[-5:]] = True
    mass = (a * near[:, None]).sum(-1).mean(1)
    for tau in (float(mass.min()) - 1e-6, float(mass.max()) - 1e-6, float(mass.max()) + 1e-6):
        m = get_method("simlayerkv", sinks=3, recent=5, tau=tau)
        assert torch.equal(m.lazy(inputs(m, q, k, v, valid)), mass > tau)


def test_simlayerkv_lazy_layers_stream_and_busy_layers_keep_all():
    model = prepare(make_model("llama"))
    ids = torch.randint(1, 128, (1, 30), generator=torch.Generator().manual_seed(0))
    lazy = compress(model, None, ids, "simlayerkv", keep=0.4, tau=-1.0, sinks=2)
    for layer in lazy.cache.sieve_layers:  # every layer lazy: the 2 sinks + the 10 most recent
        assert layer.token_index[0, 0].tolist() == [0, 1, *range(20, 30)]
    busy = compress(model, None, ids, "simlayerkv", keep=0.4, tau=2.0)
    assert all(layer.n_held == 30 for layer in busy.cache.sieve_layers)
    assert busy.stats.kv_bytes == busy.stats.kv_bytes_full  # the ratio is an output


def test_kvgrad_without_gradient_weights_reconstruction_by_the_value_through_w_o():
    model = prepare(make_model("llama"))
    ids = torch.randint(1, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    pre = prefill(model, None, ids, methods=["kvgrad"])
    got = get_method("kvgrad", chunk=12, gradient=False).whole_pass(pre)
    base = kvzip_oracle(model, ids, [], 12)  # no tokenizer: kvzip's pass runs with no prompt
    h, hkv = model.config.num_attention_heads, model.config.num_key_value_heads
    d = model.config.hidden_size // h
    for i, layer in enumerate(model.model.layers):
        w = layer.self_attn.o_proj.weight.detach()
        values = pre.cache.layers[i].values[0]  # [Hkv, T, D]
        group = h // hkv
        norms = torch.stack(
            [
                torch.stack(
                    [
                        (values[kv] @ w[:, qh * d : qh * d + d].T).norm(dim=-1)
                        for qh in range(kv * group, kv * group + group)
                    ]
                ).mean(0)
                for kv in range(hkv)
            ]
        )
        torch.testing.assert_close(got[i][0][0], base[i][0] * norms, atol=1e-5, rtol=1e-4)


def kvgrad_oracle(model, ids: torch.Tensor, chunk: int) -> dict[int, torch.Tensor]:
    """KVgrad by its formula with plain autograd: for each chunk, the eager twin model on context + chunk (no
    prompt); Phi = sum over the chunk's rows of ||h^L||^2 (the last decoder layer's output), its gradient with
    respect to each layer's self-attention output; S_j = max over the chunk's rows p and the group's heads h of
    A^h[p, j] * ||v_j W_O^h|| * ||dPhi/da_p||, max over chunks."""
    ref = twin(model)
    ref.set_attn_implementation("eager")
    cfg = ref.config
    n_kv, h = cfg.num_key_value_heads, cfg.num_attention_heads
    d = cfg.hidden_size // h
    t = ids.shape[1]
    out: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}
    last: list[torch.Tensor] = []
    for lo in range(0, t, chunk):
        seq = torch.cat([ids, ids[:, lo : lo + chunk]], -1)
        acts.clear()
        last.clear()
        hooks = [blk.self_attn.register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(i, o[0]))
                 for i, blk in enumerate(ref.model.layers)]  # fmt: skip
        hooks.append(ref.model.layers[-1].register_forward_hook(lambda m, a, o: last.append(o)))
        res = ref(input_ids=seq, output_attentions=True, use_cache=True)
        for hk in hooks:
            hk.remove()
        phi = last[0][0, t:].pow(2).sum()
        grads = torch.autograd.grad(phi, [acts[i] for i in range(len(acts))])
        for i, a in enumerate(res.attentions):  # [1, H, L, L]
            g = grads[i][0, t:].norm(dim=-1)  # [n]
            w = ref.model.layers[i].self_attn.o_proj.weight.detach()
            v = res.past_key_values.layers[i].values[0, :, :t].detach()  # [Hkv, T, D]
            s = torch.zeros(n_kv, t)
            for qh in range(h):
                vo = (v[qh // (h // n_kv)] @ w[:, qh * d : qh * d + d].T).norm(dim=-1)  # [T]
                per = (a[0, qh, t:, :t].detach() * vo[None, :] * g[:, None]).amax(0)
                s[qh // (h // n_kv)] = torch.maximum(s[qh // (h // n_kv)], per)
            out[i] = torch.maximum(out[i], s) if i in out else s
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_kvgrad_multiplies_attention_by_value_through_w_o_and_the_gradient_norm(arch):
    """The gradient factor (METHODS.md section 10): the oracle is the formula with plain autograd on the eager
    model, each attention weight times ||v W_O^h|| times the gradient norm at its probe row."""
    model = prepare(make_model(arch))
    ids = torch.randint(1, 128, (1, 20), generator=torch.Generator().manual_seed(3))
    pre = prefill(model, None, ids, methods=["kvgrad"])
    got = get_method("kvgrad", chunk=8).whole_pass(pre)
    want = kvgrad_oracle(model, ids, 8)
    assert set(got) == set(want)
    for i in want:
        torch.testing.assert_close(got[i][0][0], want[i], atol=1e-5, rtol=2e-4)
    assert not any(p.grad is not None for p in model.parameters())  # gradients of activations only
    assert pre.cache.layers[0].n_held == 20  # the passes ran on forks


def test_kvcompose_counts_by_composite_tokens_and_keeps_each_heads_best():
    model = prepare(make_model("qwen2"))
    ids = torch.randint(1, 128, (1, 32), generator=torch.Generator().manual_seed(2))
    pre = prefill(model, None, ids, methods=["kvcompose"])
    scores = kvzip_oracle(model, ids, [], 16)  # the context again after itself, no prompt
    got = get_method("kvcompose", chunk=16).whole_pass(pre)
    for i in scores:
        torch.testing.assert_close(got[i][0], scores[i], atol=2e-5, rtol=1e-4)
    c = pre.compress("kvcompose", keep=0.25, chunk=16)
    comp = {i: s[0].sort(-1, descending=True).values.mean(0) for i, s in scores.items()}  # [T] per layer
    n_layers = len(comp)
    flat = sorted(((float(v), i) for i, cv in comp.items() for v in cv), reverse=True)[: 8 * n_layers]
    for layer in c.cache.sieve_layers:
        n = max(1, sum(1 for _, i in flat if i == layer.layer_idx))
        for head in range(scores[layer.layer_idx].shape[1]):
            want = scores[layer.layer_idx][0, head].topk(n).indices.sort().values
            assert layer.token_index[0, head].tolist() == want.tolist()


def test_kvcompose_as_kvpress_averages_the_group_and_adds_the_head_mean():
    """``group=mean:head_mean=true`` (kvpress's KVComposePress): each query head's max attention from the context's
    second copy, averaged over its GQA group, plus the layer's mean over its KV heads; counts by composite tokens."""
    model = prepare(make_model("qwen2"))
    ids = torch.randint(1, 128, (1, 32), generator=torch.Generator().manual_seed(2))
    ref = twin(model)
    ref.set_attn_implementation("eager")
    hkv, t = model.config.num_key_value_heads, ids.shape[1]
    scores = {}
    for lo in range(0, t, 16):  # each chunk of 16 teacher-forced after the whole context, no prompt
        with torch.no_grad():
            att = ref(input_ids=torch.cat([ids, ids[:, lo : lo + 16]], -1), output_attentions=True).attentions
        for i, a in enumerate(att):
            m = a[0, :, t:, :t].amax(1)  # [H, T]
            scores[i] = torch.maximum(scores[i], m) if i in scores else m
    for i, m in scores.items():
        s = m.view(hkv, -1, t).mean(1)
        scores[i] = s + s.mean(0, keepdim=True)
    pre = prefill(model, None, ids, methods=["kvcompose"])
    got = get_method("kvcompose", chunk=16, group="mean", head_mean=True).whole_pass(pre)
    for i in scores:
        torch.testing.assert_close(got[i][0][0], scores[i], atol=2e-5, rtol=1e-4)
    c = pre.compress("kvcompose", keep=0.25, chunk=16, group="mean", head_mean=True)
    comp = {i: s.sort(-1, descending=True).values.mean(0) for i, s in scores.items()}
    flat = sorted(((float(v), i) for i, cv in comp.items() for v in cv), reverse=True)[: 8 * len(comp)]
    for layer in c.cache.sieve_layers:
        n = max(1, sum(1 for _, i in flat if i == layer.layer_idx))
        for head in range(hkv):
            want = scores[layer.layer_idx][head].topk(n).indices.sort().values
            assert layer.token_index[0, head].tolist() == want.tolist()


def test_gui_kv_adds_the_hidden_norm_share_to_the_window_attention_share(data):
    q, k, v, valid = data
    m = get_method("gui_kv", window=5, kernel=3, alpha=0.7)
    x = inputs(m, q, k, v, valid)
    norm = torch.rand(B, T, generator=torch.Generator().manual_seed(9)) + 0.1
    x.pass_score = norm
    got = m.score(x).double()
    w = weights(valid)
    attn = group_mean(full_attention(q, k, valid, SCALE)[:, :, T - 5 :].sum(2), HKV)
    pooled = torch.stack([attn[..., max(0, j - 1) : j + 2].amax(-1) for j in range(T)], -1) * w[:, None]
    hn = norm.double() * w
    want = pooled / pooled.sum(-1, keepdim=True) + 0.7 * (hn / hn.sum(-1, keepdim=True))[:, None]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_gui_kv_reads_the_final_hidden_states_norm():
    model = prepare(make_model("llama"))
    ids = torch.randint(1, 128, (1, 20), generator=torch.Generator().manual_seed(4))
    pre = prefill(model, None, ids, methods=["gui_kv"])
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    got = get_method("gui_kv").whole_pass(pre)
    for layer in pre.cache.sieve_layers:
        torch.testing.assert_close(got[layer.layer_idx], h.norm(dim=-1), atol=1e-5, rtol=1e-5)
    c = compress(model, None, ids, "gui_kv", keep=0.5, window=4)
    assert all(layer.n_held == 10 for layer in c.cache.sieve_layers)
