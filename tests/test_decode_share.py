"""Issue 28: decode-time rules whose share kept is an output: ``dms`` while decoding (each token judged once, the
newest ``recent`` always kept) and ``ratio_decoding`` (every ``interval`` generated tokens, cut to ``ratio`` of every
token seen). Oracles from the dense attention of an eager twin (the prompt is attended in full before any cut)."""

from __future__ import annotations

import pytest
import torch

from conftest import ids
from tokensieve.compat import with_cache
from tokensieve.errors import BudgetError, ParameterError
from tokensieve.kv.evicting import DecodeCache

P = 30


def dense_attention(ref, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's attention ``[Hkv, G, T, T]`` of the plain model (float64)."""
    with torch.no_grad():
        out = ref(input_ids=x, output_attentions=True)
    hkv = ref.config.num_key_value_heads
    return [a[0].double().view(hkv, -1, *a.shape[-2:]) for a in out.attentions]


def held(layer) -> list[int]:
    return list(range(layer.n_held)) if layer.token_index is None else layer.token_index[0, 0].tolist()


def test_dms_judges_the_prompt_once_by_the_heads_mean_threshold(llama_pair):
    model, ref = llama_pair
    x, recent, tau = ids(1, P), 6, 1.0
    cache = DecodeCache(model, "dms", base="h2o", recent=recent, tau=tau)
    with torch.inference_mode():
        model(x, **with_cache(model, cache))
    for layer, attn in zip(cache.evicting_layers, dense_attention(ref, x), strict=True):
        s = attn.sum(2).mean(1)  # h2o: attention summed over the prompt's queries, GQA mean [Hkv, T]
        s = s - s.min(-1, keepdim=True).values
        s = (s / s.mean(-1, keepdim=True)).mean(0)  # min 0, mean 1 per head; the heads' mean
        want = sorted({j for j in range(P - recent) if s[j] >= tau} | set(range(P - recent, P)))
        assert all(layer.token_index[0, h].tolist() == want for h in range(layer.token_index.shape[1]))
        assert layer.state["judged"][0, 0].tolist() == [1.0] * (len(want) - recent) + [0.0] * recent


def test_dms_while_decoding_judges_each_token_once_and_keeps_the_newest(llama_pair):
    model, _ = llama_pair
    recent = 5
    cache = DecodeCache(model, "dms", base="h2o", recent=recent, tau=1.2)
    with torch.inference_mode():
        model(ids(2, P), **with_cache(model, cache))
        before = [set(held(layer)[:-recent]) for layer in cache.evicting_layers]  # judged and kept
        for i, t in enumerate(ids(3, 12)[0]):
            model(t.view(1, 1), **with_cache(model, cache))
            for n, layer in enumerate(cache.evicting_layers):
                now = held(layer)
                seen = P + i + 1
                assert now[-recent:] == list(range(seen - recent, seen))  # the newest always stay
                assert before[n] <= set(now)  # a token kept when judged is never judged again
                judged = layer.state["judged"][0, 0]
                assert judged.tolist() == [1.0] * (len(now) - recent) + [0.0] * recent
                before[n] = set(now[:-recent])
    ratio = cache.kept_ratio()
    assert 0 < ratio < 1  # an output: measured from what is held


def test_ratio_decoding_cuts_to_the_share_of_every_token_seen(llama_pair):
    model, ref = llama_pair
    x, new = ids(4, P), ids(5, 9)
    cache = DecodeCache(model, "ratio_decoding", base="tova", ratio=0.5, interval=4)
    counts = []
    with torch.inference_mode():
        model(x, **with_cache(model, cache))
        counts.append(cache.evicting_layers[0].n_held)
        for i in range(new.shape[1]):
            model(new[:, i : i + 1], **with_cache(model, cache))
            counts.append(cache.evicting_layers[0].n_held)
            if i == 3:  # the first cut, at 4 generated tokens: tova's last-query attention over all 34
                attn = dense_attention(ref, torch.cat([x, new[:, :4]], -1))
                for layer, a in zip(cache.evicting_layers, attn, strict=True):
                    s = a[:, :, -1].mean((0, 1))  # [34]: one ranking, the mean over every head of the layer
                    kth = s.topk(17).values[-1]  # near-uniform random attention: ties within float error
                    for h in range(2):
                        kept = layer.token_index[0, h].tolist()
                        assert len(kept) == 17 and all(s[j] >= kth - 1e-6 for j in kept)
                        assert all(s[j] <= kth + 1e-6 for j in range(34) if j not in kept)
    assert counts == [30, 31, 32, 33, 17, 18, 19, 20, 19, 20]  # cuts at 34 -> 17 and 38 -> 19 tokens seen


def test_share_rules_refuse_a_budget_and_a_base_without_a_decode_score(llama_pair):
    model, _ = llama_pair
    with pytest.raises(BudgetError, match="pass no budget"):
        DecodeCache(model, "dms", budget=8, base="h2o")
    with pytest.raises(ParameterError, match="decode-time score") as err:
        DecodeCache(model, "ratio_decoding", base="snapkv")
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="needs budget"):
        DecodeCache(model, "h2o")
