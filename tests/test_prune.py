"""Prefill pruning: exactness with nothing pruned, a per-layer masked-model oracle for the pruned prefill,
for LazyLLM's revival while generating, the pruning rules themselves, hooks that leave no trace, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokensieve as ts
from conftest import ids, make_model, twin
from tokensieve.compat import with_cache
from tokensieve.kv.prune import PRUNERS, decoder_layers, prune

NON_SLIDING = ["llama", "mistral", "qwen2", "qwen3"]
T = 40


@pytest.mark.parametrize("method", list(PRUNERS))
@pytest.mark.parametrize("arch", NON_SLIDING)
def test_nothing_pruned_is_bit_identical(arch, method):
    model = ts.prepare(make_model(arch))
    ref = twin(model)
    prompt, new = ids(1, T), ids(2, 4)
    with prune(model, method, keep=(1.0, 1.0, 1.0)) as cache, torch.inference_mode():
        got = [model(prompt, **with_cache(model, cache)).logits]
        got += [model(new[:, i : i + 1], **with_cache(model, cache)).logits for i in range(4)]
    with torch.inference_mode():
        rc = DynamicCache(config=ref.config)
        want = [ref(prompt, **with_cache(ref, rc)).logits]
        want += [ref(new[:, i : i + 1], **with_cache(ref, rc)).logits for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(model))  # nothing left behind


class Oracle:
    """The full model (every token computed in every layer) with a per-layer boolean mask [T', T'], and
    the attention probabilities it computed (to check the pruning rules)."""

    def __init__(self, model, masks: dict[int, torch.Tensor]) -> None:
        self.masks, self.probs = masks, {}
        AttentionInterface.register("test_prune_oracle", self.attention)
        AttentionMaskInterface.register("test_prune_oracle", sdpa_mask)
        self.model = twin(model)
        self.model.set_attn_implementation("test_prune_oracle")

    def attention(self, module, query, key, value, attention_mask, **kwargs):
        g = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
        logits = (query @ k.transpose(-1, -2)) * kwargs["scaling"]
        probs = torch.softmax(logits.masked_fill(~self.masks[module.layer_idx], float("-inf")), -1)
        self.probs[module.layer_idx] = probs
        return (probs @ v).transpose(1, 2), probs

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(seq).logits


def prefill_masks(alive: list[torch.Tensor], n: int) -> dict[int, torch.Tensor]:
    """Layer l: a row that is alive sees the alive keys at or before it; a pruned row sees only itself."""
    masks = {}
    for layer, keep in enumerate(alive):
        a = torch.zeros(n, dtype=torch.bool)
        a[keep] = True
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        masks[layer] = (causal & a[None, :] & a[:, None]) | torch.eye(n, dtype=torch.bool)
    return masks


@pytest.mark.parametrize("method", list(PRUNERS))
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_pruned_prefill_equals_the_per_layer_masked_model_and_follows_its_rule(arch, method):
    model = ts.prepare(make_model(arch))
    prompt = ids(3, T)
    rows = 5 if method == "spatten" else 1  # LazyLLM ranks by the last token alone
    with prune(model, method, keep=(0.6, 0.3), layers=(1, 2), rows=rows, sinks=1) as cache:
        with torch.inference_mode():
            got = model(prompt, **with_cache(model, cache)).logits[:, -1]
        alive = [
            layer.token_index[0, 0] if layer.token_index is not None else torch.arange(T) for layer in cache.layers
        ]
    assert [a.numel() for a in alive] == [T, 24, 12] == cache.engine.alive_per_layer
    oracle = Oracle(model, prefill_masks(alive, T))
    torch.testing.assert_close(got, oracle(prompt)[:, -1], atol=3e-5, rtol=1e-4)

    # the rule: which tokens survive each stage (sink and last token always)
    def importance(layer: int) -> torch.Tensor:
        p = oracle.probs[layer][0]  # [H, T, T]
        if method == "spatten":  # the last 5 query rows still in the sequence at that layer
            return p[:, alive[layer][-5:]].sum(1).mean(0)
        return p[:, -1].mean(0)

    for stage in (1, 2):
        before = alive[stage - 1]
        if method == "spatten":  # cumulative over every layer so far
            score = sum(importance(layer) for layer in range(stage))[before]
        else:  # the last token's attention in the layer before
            score = importance(stage - 1)[before]
        n_keep = alive[stage].numel()
        forced = {int(before[0]), int(before[-1])}
        ranked = [int(before[j]) for j in score.argsort(descending=True).tolist() if int(before[j]) not in forced]
        assert set(alive[stage].tolist()) == forced | set(ranked[: n_keep - 2])


def test_lazyllm_revival_equals_the_masked_model():
    """A decode step that revives pruned tokens: each revived token is computed from its stored hidden
    state in the layers it missed, attending only to what those layers hold at or before it; the new token
    then sees them. The oracle is one full forward with per-layer masks saying exactly that."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conftest import COMMON

    torch.manual_seed(0)
    model = ts.prepare(Qwen2ForCausalLM(Qwen2Config(**{**COMMON, "num_hidden_layers": 5})).eval())
    prompt, new = ids(4, T), ids(5, 1)
    with prune(model, "lazyllm", keep=(0.5, 0.25), layers=(1, 3)) as cache:
        with torch.inference_mode():
            model(prompt, **with_cache(model, cache))
            alive = [
                layer.token_index[0, 0].clone() if layer.token_index is not None else torch.arange(T)
                for layer in cache.layers
            ]
            got = model(new, **with_cache(model, cache)).logits[:, -1]
        after = [
            layer.token_index[0, 0] if layer.token_index is not None else torch.arange(T + 1) for layer in cache.layers
        ]
        assert cache.engine.revived.get(1, 0) > 0 and cache.engine.revived.get(3, 0) > 0
    n = T + 1
    masks = {}
    for layer in range(len(alive)):
        a = torch.zeros(n, dtype=torch.bool)
        a[alive[layer]] = True
        r = torch.zeros(n, dtype=torch.bool)
        r[after[layer]] = True
        r &= ~a
        r[T] = False  # the new token
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        m = (causal & a[None, :] & a[:, None]) | (causal & (a | r)[None, :] & r[:, None])
        m[T] = a | r
        m[T, T] = True
        masks[layer] = m | torch.eye(n, dtype=torch.bool)
    want = Oracle(model, masks)(torch.cat([prompt, new], 1))[:, -1]
    torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("method", list(PRUNERS))
@pytest.mark.parametrize("arch", NON_SLIDING)
def test_every_pruner_generates(arch, method):
    model = ts.prepare(make_model(arch))
    with prune(model, method) as cache, torch.inference_mode():
        out = model.generate(ids(6, T), **with_cache(model, cache), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape == (1, T + 8)
    assert cache.engine.alive_per_layer == [40, 28, 14]  # 3 layers: stages at layers 1 (0.7) and 2 (0.35)
    if method == "spatten":  # cascade: pruned tokens stay pruned while generating
        assert cache.tokens_held() == [47, 35, 21]


def test_prune_errors():
    model = ts.prepare(make_model("llama"))
    bad = [
        (ts.UnknownMethodError, "unknown prefill-pruning method", "lazy", {}),
        (ts.InvalidKeepError, "not increase", "lazyllm", {"keep": (0.3, 0.6), "layers": (1, 2)}),
        (ts.InvalidKeepError, r"\(0, 1\]", "spatten", {"keep": (1.5,), "layers": (1,)}),
        (ts.InvalidKeepError, "outside the model's layers", "lazyllm", {"keep": (0.5,), "layers": (7,)}),
    ]
    for error, message, method, params in bad:
        with pytest.raises(error, match=message), prune(model, method, **params):
            pass
    with (
        pytest.raises(ts.BatchError, match="one sequence at a time"),
        prune(model, "lazyllm") as cache,
        torch.inference_mode(),
    ):
        model(ids(7, T, batch=2), **with_cache(model, cache))
    with (
        pytest.raises(ts.UnsupportedArchitectureError, match="sliding window"),
        prune(ts.prepare(make_model("gemma3")), "lazyllm"),
    ):
        pass
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(model))
