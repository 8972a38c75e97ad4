"""Issue 28: ``rerotate`` (kept keys re-rotated to contiguous positions), against transformers' own RoPE applied to
the pre-RoPE keys at the new positions, and against a fresh prefill of the kept tokens alone; with ``block`` a
document longer than the model's trained window is read without a position past it."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import tokensieve as ts
from conftest import COMMON, twin
from conftest import ids as random_ids
from tokensieve.compat import with_cache
from tokensieve.errors import BudgetError
from tokensieve.kv import compress, compress_blocks

T = 40


def tiny(arch: str, layers: int | list[str], max_pos: int = 1024):
    torch.manual_seed(0)
    n = len(layers) if isinstance(layers, list) else layers
    common = {**COMMON, "num_hidden_layers": n, "max_position_embeddings": max_pos}
    if arch == "gemma3":
        cfg = Gemma3TextConfig(**common, head_dim=16, sliding_window=8, layer_types=layers, query_pre_attn_scalar=16)
        model = Gemma3ForCausalLM(cfg)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model = model.eval()
    model.set_attn_implementation("sdpa")
    return model


ids = partial(random_ids, high=120)  # this file's inputs stay below id 120


def pre_rope_keys(model, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each layer's keys ``[B, Hkv, T, D]`` before RoPE in a plain prefill of ``x`` (k_norm's output on Gemma-3,
    k_proj's on Llama)."""
    out, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if hasattr(attn, "k_norm"):
            hooks.append(attn.k_norm.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o.detach())))
        else:
            d = attn.head_dim
            fn = lambda m, a, o, i=i, d=d: out.__setitem__(i, o.detach().view(*o.shape[:2], -1, d).transpose(1, 2))  # noqa: E731
            hooks.append(attn.k_proj.register_forward_hook(fn))
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return out


def hf_rope(model, layer_idx: int, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``keys [B, H, n, D]`` rotated at ``positions [H, n]`` by transformers' own rotary module (per head)."""
    rot = model.model.rotary_emb
    kind = getattr(model.config, "layer_types", None)
    args = (kind[layer_idx],) if kind is not None and hasattr(rot, "layer_types") else ()
    out = []
    for h in range(keys.shape[1]):
        cos, sin = rot(keys, positions[h][None], *args)
        out.append(apply_rotary_pos_emb(keys[:, h : h + 1], keys[:, h : h + 1], cos, sin)[1])
    return torch.cat(out, 1)


@pytest.mark.parametrize("arch,layers", [("llama", 3), ("gemma3", ["sliding_attention", "full_attention"] * 2)])
def test_kept_keys_are_the_pre_rope_keys_at_positions_0_to_n(arch, layers):
    model = tiny(arch, layers)
    ref = twin(model)
    ts.prepare(model)
    x = ids(1, T)
    plain = compress(model, None, x, "keydiff", budget=12)  # the same selection, not renumbered
    c = compress(model, None, x, "rerotate", budget=12, base="keydiff")
    keys = pre_rope_keys(ref, x)
    n = 12
    assert c.context_ids.shape == (1, n) and c.cache.get_seq_length() == n
    for before, after in zip(plain.cache.sieve_layers, c.cache.sieve_layers, strict=True):
        idx = before.token_index[0]  # [Hkv, n]: the token each slot holds
        pre = keys[after.layer_idx].gather(2, idx[None, :, :, None].expand(-1, -1, -1, keys[0].shape[-1]))
        want = hf_rope(ref, after.layer_idx, pre, torch.arange(n).expand(idx.shape[0], n))
        torch.testing.assert_close(after.keys, want, atol=1e-5, rtol=1e-4)
        assert after.token_index is None and after.cumulative_length == n
    for i, layer in enumerate(c.cache.layers):
        if i in {lay.layer_idx for lay in c.cache.sieve_layers}:
            continue
        m = layer.keys.shape[-2]  # a window: the context's last tokens, the newest at n - 1
        assert m == min(7, n)
        pos = torch.arange(n - m, n).expand(layer.keys.shape[1], m)
        torch.testing.assert_close(layer.keys, hf_rope(ref, i, keys[i][:, :, T - m :], pos), atol=1e-5, rtol=1e-4)
    assert c.generate(ids(2, 4), max_new_tokens=3, min_new_tokens=3).shape == (1, 3)


@pytest.mark.parametrize("arch,layers", [("llama", 1), ("gemma3", ["full_attention"])])
def test_one_layer_model_equals_a_fresh_prefill_of_the_kept_tokens(arch, layers):
    """With one layer the keys and values depend on the token alone: the renumbered cache is exactly the cache of the
    kept tokens prefilled on their own, so the next logits match it (to float tolerance)."""
    model = tiny(arch, layers)
    ref = twin(model)
    ts.prepare(model)
    x, q = ids(3, T), ids(4, 5)
    c = compress(model, None, x, "rerotate", budget=14, base="streaming")
    kept = x[:, list(range(4)) + list(range(T - 10, T))]  # streaming: 4 sinks and the last 10
    assert torch.equal(c.context_ids, kept)
    cache = c.cache.fork()
    with torch.no_grad():
        got = model(input_ids=q, **with_cache(model, cache), use_cache=True).logits
        want = ref(input_ids=torch.cat([kept, q], -1)).logits[:, -5:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_nothing_removed_is_the_plain_cache_bit_for_bit():
    model = tiny("llama", 2)
    ref = twin(model)
    ts.prepare(model)
    x, q = ids(5, T), ids(6, 4)
    c = compress(model, None, x, "rerotate", keep=1.0, base="keydiff")
    assert torch.equal(c.context_ids, x)
    with torch.no_grad():
        got = model(input_ids=q, **with_cache(model, c.cache.fork()), use_cache=True).logits
        want = ref(input_ids=torch.cat([x, q], -1)).logits[:, -4:]
    assert torch.equal(got, want)


def test_block_prefill_reads_past_the_trained_window():
    """max_position_embeddings 64, a 300-token document in blocks of 16 under a 24-token budget: no position ever
    reaches 64, and on a one-layer model the result is the fresh prefill of the kept tokens."""
    model = tiny("llama", 1, max_pos=64)
    ref = twin(model)
    ts.prepare(model)
    seen: list[int] = []
    def record(module, args, kwargs, out):
        seen.append(int((args[1] if len(args) > 1 else kwargs["position_ids"]).max()))

    hook = model.model.rotary_emb.register_forward_hook(record, with_kwargs=True)
    x, q = ids(7, 300), ids(8, 4)
    c = compress_blocks(model, None, x, "rerotate", budget=24, block=16, base="streaming")
    hook.remove()
    assert max(seen) < 24 + 2 * 16 <= 64 and c.cache.get_seq_length() == 24
    kept = x[:, list(range(4)) + list(range(300 - 20, 300))]
    assert torch.equal(c.context_ids, kept)
    with torch.no_grad():
        got = model(input_ids=q, **with_cache(model, c.cache.fork()), use_cache=True).logits
        want = ref(input_ids=torch.cat([kept, q], -1)).logits[:, -4:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    plain = compress_blocks(model, None, x, "streaming", budget=24, block=16)
    assert plain.cache.get_seq_length() == 300  # without rerotate positions count every token seen


def test_layers_that_differ_are_refused_in_one_line():
    model = ts.prepare(tiny("llama", 2))
    with pytest.raises(BudgetError, match="uniform") as err:
        compress(model, None, ids(1, T), "rerotate", keep=0.5, base="keydiff", allocator="pyramid")
    assert "\n" not in str(err.value)
    with pytest.raises(BudgetError, match="dense layers") as err:
        compress(model, None, ids(1, T), "rerotate", keep=0.5, base="kvzip")  # one global top-k: ragged heads
    assert "\n" not in str(err.value)
