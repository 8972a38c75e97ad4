"""Issue 28's wrappers and budget rules (dms, critical_kv / critical_adakv, chunk, entropy_chunk, merging,
per_layer), each against a plain-loop oracle on a tiny model's prefilled cache."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model
from tokensieve import prepare
from tokensieve.errors import BudgetError, ParameterError
from tokensieve.kv import compress, get_method, prefill

T = 32


@pytest.fixture(scope="module")
def pre():
    model = prepare(make_model("llama"))
    ids = torch.randint(1, 128, (1, T), generator=torch.Generator().manual_seed(11))
    return prefill(model, None, ids, methods=["knorm", "snapkv"])  # snapkv: the prompt's last 32 queries observed


def knorm(layer):
    """knorm's score, written out: minus each key's norm ``[Hkv, T]`` (fp32 as scored; equal scores broken towards
    the later token as tokensieve breaks them: a repeated token has the same key norm)."""
    return -layer.keys[0].float().norm(dim=-1).double() + torch.arange(T).double() * 1e-12


def kept(layer, head):
    idx = layer.segment(0, head)[2] if hasattr(layer, "segment") else layer.token_index[0, head]
    return sorted(idx.tolist())


def test_dms_keeps_what_reaches_tau_and_the_newest_always(pre):
    c = pre.compress("dms", keep=1.0, base="knorm", tau=1.0, recent=5)  # the ratio is its own: keep=1.0 still acts
    for full, layer in zip(pre.cache.sieve_layers, c.cache.sieve_layers, strict=True):
        for h in range(2):
            s = knorm(full)[h].double()
            norm = (s - s.min()) / (s - s.min()).mean()  # min 0, mean 1
            want = sorted(set(torch.nonzero(norm >= 1.0).flatten().tolist()) | set(range(T - 5, T)))
            assert kept(layer, h) == want
    assert c.stats.kv_bytes < c.stats.kv_bytes_full  # what it held is measured, not the plan's keep


def test_dms_without_a_scorer_is_a_one_line_error(pre):
    with pytest.raises(ParameterError, match="base=") as err:
        pre.compress("dms", keep=1.0, base="")
    assert "\n" not in str(err.value)
    with pytest.raises(ParameterError, match="base='mikv'"):
        get_method("dms", base="mikv")


def critical_oracle(full, layer_w, counts, d):
    """Per head: the best ``c // 2`` by the score, then the best of the rest by ``(s + eps) x mean_g |v W_O^g|_1``."""
    out = []
    for h, c in enumerate(counts):
        s = knorm(full)[h]
        first = set(s.topk(c // 2).indices.tolist())
        proj = [(full.values[0, h] @ layer_w[:, g * d : g * d + d].T).abs().sum(-1) for g in (2 * h, 2 * h + 1)]
        second = ((s.float() + 1e-6) * torch.stack(proj).mean(0)).double() + torch.arange(T).double() * 1e-12
        second[list(first)] = float("-inf")
        out.append(sorted(first | set(second.topk(c - c // 2).indices.tolist())))
    return out


@pytest.mark.parametrize("method", ["critical_kv", "critical_adakv"])
def test_critical_kv_spends_half_by_the_score_and_half_by_the_output_change(pre, method):
    from tokensieve.kv.budget import AdaKV

    c = pre.compress(method, keep=0.5, base="knorm")
    model = pre.model
    d = model.config.hidden_size // model.config.num_attention_heads
    uneven = 0
    for full, layer in zip(pre.cache.sieve_layers, c.cache.sieve_layers, strict=True):
        w = model.model.layers[full.layer_idx].self_attn.o_proj.weight.detach()
        counts = [16, 16]
        if method == "critical_adakv":  # per-head budgets: the AdaKV allocator's, from the base score
            counts = AdaKV().head_budgets(knorm(full).float()[None], 16, None, 0, 0)[0].tolist()
            assert sum(counts) == 32
            uneven += counts != [16, 16]
        assert [kept(layer, h) for h in range(2)] == critical_oracle(full, w, counts, d)
    assert uneven or method == "critical_kv"  # the head-adaptive form gave some layer uneven heads (ragged)


def test_chunk_keeps_the_same_share_of_every_chunk(pre):
    c = pre.compress("chunk", keep=0.5, base="knorm", size=8)
    for full, layer in zip(pre.cache.sieve_layers, c.cache.sieve_layers, strict=True):
        for h in range(2):
            s = knorm(full)[h]
            want = sorted(lo + int(j) for lo in range(0, T, 8) for j in s[lo : lo + 8].topk(4).indices)
            assert kept(layer, h) == want


def entropy_oracle(s, budget, size, top, gate):
    """The greedy rule, plainly: chunks by mean (best first); a spiky chunk (above the median mean, entropy under
    gate x log(size)) offers its best ``top``, another all of its tokens; taken until the budget is spent."""
    chunks = [list(range(lo, min(len(s), lo + size))) for lo in range(0, len(s), size)]
    means = [float(s[c].mean()) for c in chunks]
    med = sorted(means)[(len(means) - 1) // 2]
    out = []
    for i in sorted(range(len(chunks)), key=lambda i: -means[i]):
        c = chunks[i]
        p = (s[c] - s[c].min()).double() + 1e-6
        p = p / p.sum()
        entropy = float(-(p * p.log()).sum())
        spiky = entropy < gate * math.log(size) and means[i] >= med
        best = sorted(c, key=lambda j: -float(s[j]))
        out += best[:top] if spiky else best
    return sorted(out[:budget])


@pytest.mark.parametrize("gate", [0.0, 0.9, 1.0])
def test_entropy_chunk_follows_the_greedy_rule(pre, gate):
    c = pre.compress("entropy_chunk", keep=0.5, base="knorm", size=4, spiky_top=2, gate=gate)
    for full, layer in zip(pre.cache.sieve_layers, c.cache.sieve_layers, strict=True):
        for h in range(2):
            assert kept(layer, h) == entropy_oracle(knorm(full)[h], 16, 4, 2, gate)


def test_merging_folds_each_evicted_value_into_the_nearest_kept_key(pre):
    c = pre.compress("merging", keep=0.25, base="knorm")
    for full, layer in zip(pre.cache.sieve_layers, c.cache.sieve_layers, strict=True):
        for h in range(2):
            keep = knorm(full)[h].topk(8).indices.sort().values.tolist()
            k, v = full.keys[0, h].double(), full.values[0, h].double()
            num = {t: v[t].clone() for t in keep}
            den = dict.fromkeys(keep, 1.0)
            for e in range(T):
                if e in keep:
                    continue
                cos = {t: float(k[e] @ k[t] / (k[e].norm() * k[t].norm())) for t in keep}
                t = max(keep, key=lambda j: cos[j])
                w = max(cos[t], 0.0) * float(v[e].norm() / (v[e].norm() + v[t].norm()))
                num[t] += w * v[e]
                den[t] += w
            want = torch.stack([num[t] / den[t] for t in keep]).float()
            assert layer.token_index[0, h].tolist() == keep
            torch.testing.assert_close(layer.values[0, h], want, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(layer.keys[0, h], full.keys[0, h, keep])  # keys unchanged


def test_per_layer_keeps_the_user_given_share_in_each_layer():
    model = prepare(make_model("llama"))
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    c = compress(model, None, ids, "knorm", keep=0.5, allocator=get_allocator_with("0.5,0.25,1.0"))
    assert [layer.n_held for layer in c.cache.sieve_layers] == [20, 10, 40]
    with pytest.raises(BudgetError, match="keeps="):
        compress(model, None, ids, "knorm", keep=0.5, allocator=get_allocator_with("0.5,0.25"))


def get_allocator_with(keeps):
    from tokensieve.kv import get_allocator

    return get_allocator("per_layer", keeps=keeps)


def test_think_stores_only_the_kept_key_channels_and_queries_drop_them(pre):
    from tokensieve.kv.cache.channels import ChannelLayer

    c = pre.compress("think", keep=0.5, base="knorm", rho=0.5, queries=4)
    ref = pre.compress("knorm", keep=0.5)
    for full, layer, plain in zip(pre.cache.sieve_layers, c.cache.sieve_layers, ref.cache.sieve_layers, strict=True):
        assert isinstance(layer, ChannelLayer)
        obs = pre.observations[full.layer_idx]
        q = obs.queries[..., -4:, :].double()  # [1, Hkv, G, 4, D]
        k = full.keys.double()
        score = q.pow(2).mean((0, 2, 3)) * k.pow(2).mean((0, 2))  # [Hkv, D]
        want = score.topk(8, -1).indices.sort(-1).values  # D = 16: half kept
        assert torch.equal(layer.channels, want[None])  # [B, Hkv, D'], one row
        assert layer.keys.shape[-1] == 8 and layer.values.shape[-1] == 16
        torch.testing.assert_close(layer.keys, plain.keys.gather(-1, want[None, :, None].expand(1, -1, 16, -1)))
    # the bytes, measured from the storages: keys halved, values whole, plus the small channel index
    got = c.stats.kv_bytes
    index = sum(layer.channels.nbytes for layer in c.cache.sieve_layers)
    assert got - index == 0.75 * ref.stats.kv_bytes  # 8 of 16 key channels and every value channel, 16 tokens


def test_think_chooses_channels_per_sequence():
    """Two rows of one batch (equal lengths, no padding) each keep the channels they keep alone, as in the paper."""
    model = prepare(make_model("llama"))
    rows = torch.randint(1, 128, (2, T), generator=torch.Generator().manual_seed(12))
    kw = dict(keep=0.5, base="knorm", rho=0.5, queries=4)
    batch = compress(model, None, rows, "think", **kw)
    alone = [compress(model, None, rows[r : r + 1], "think", **kw) for r in range(2)]
    for i, layer in enumerate(batch.cache.sieve_layers):
        want = torch.cat([a.cache.sieve_layers[i].channels for a in alone])
        assert torch.equal(layer.channels, want)
    assert not torch.equal(batch.cache.sieve_layers[0].channels[0], batch.cache.sieve_layers[0].channels[1])


def test_think_attention_is_the_dot_product_over_the_kept_channels(pre):
    c = pre.compress("think", keep=1.0, base="knorm", rho=0.5, queries=4)
    model = pre.model
    question = torch.randint(1, 128, (1, 3), generator=torch.Generator().manual_seed(5))
    channels = {layer.layer_idx: layer.channels[0] for layer in c.cache.sieve_layers}

    def masked(module, query, key, value, attention_mask, **kwargs):
        # the oracle: zero the dropped channels of queries and keys (the sum over c of q_c k_c loses those terms)
        keep = torch.zeros(key.shape[1], key.shape[-1], dtype=query.dtype)
        keep.scatter_(1, channels[module.layer_idx], 1.0)
        g = query.shape[1] // key.shape[1]
        q = query * keep.repeat_interleave(g, 0)[None, :, None]
        k = key * keep[None, :, None]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), value.repeat_interleave(g, 1), is_causal=False,
            attn_mask=attention_mask, scale=kwargs.get("scaling"),
        ).transpose(1, 2), None  # fmt: skip

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from conftest import twin
    from tokensieve.compat import with_cache

    AttentionInterface.register("test_think_oracle", masked)
    AttentionMaskInterface.register("test_think_oracle", sdpa_mask)
    ref = twin(model)
    with torch.inference_mode():
        got = model(question, **with_cache(model, c.cache.fork())).logits
        plain = ref(torch.cat([pre.context_ids, question], 1)).logits[:, T:]
    ref.set_attn_implementation("test_think_oracle")
    # the context's own rows ran with every channel; only the question rows read the pruned keys
    with torch.inference_mode():
        from transformers import DynamicCache

        cache = DynamicCache(config=ref.config)
        ref.set_attn_implementation("sdpa")
        ref(pre.context_ids, **with_cache(ref, cache))
        ref.set_attn_implementation("test_think_oracle")
        want = ref(question, **with_cache(ref, cache)).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)  # dropping channels did change the attention


def test_think_refuses_a_ragged_token_layout_and_a_bad_rho(pre):
    with pytest.raises(BudgetError, match="dense layer"):
        pre.compress("think", keep=0.5, base="knorm", allocator="adakv")
    with pytest.raises(ParameterError, match="rho"):
        get_method("think", rho=1.0)
