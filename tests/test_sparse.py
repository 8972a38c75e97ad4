"""Sparse retrieval decoding: each selector against an exact oracle on small tensors, the sparse layer
against masked full attention, exactness when everything is read, calibration, end to end on tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokensieve as ts
from conftest import generate_padded_and_alone, ids, make_model, twin
from tokensieve.compat import with_cache
from tokensieve.kv.sparse import SPARSE, SelectInputs, SparseCache, get_sparse
from tokensieve.kv.sparse.calibrate import LayerSample
from tokensieve.kv.sparse.double_sparsity import outlier_channels
from tokensieve.kv.sparse.fasa import dominant_chunks
from tokensieve.kv.sparse.select import (
    block_means,
    channel_scores,
    exact_topk,
    group_probs,
    hierarchical_scores,
    logits,
    overlap,
    page_minmax,
    quest_bounds,
    rope_chunk_channels,
)
from tokensieve.runtime.encode import left_pad

B, HKV, G, S, D = 2, 2, 3, 37, 8
TINY = {
    "tidal": {"dense_layers": 1, "select_layers": (1,)},
    "hisa": {"block": 8},
    "quest": {"page": 4},
    "double_sparsity": {"calibration_tokens": 96},
    "fasa": {"calibration_tokens": 96},
    "lserve": {"page": 8, "logical": 4},
}


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_CACHE", str(tmp_path))


def tensors(seed: int = 0, padded: bool = True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HKV, G, D, generator=gen)
    k = torch.randn(B, HKV, S, D, generator=gen) * torch.linspace(0.2, 3, D)  # uneven channels
    valid = None
    if padded:
        valid = torch.ones(B, S, dtype=torch.bool)
        valid[1, :5] = False
    return q, k, valid


def naive_group_probs(q, k, valid):
    """Per head, per row, plainly: softmax of q.k over real slots, then the GQA mean."""
    out = torch.zeros(B, HKV, S)
    for b in range(B):
        for h in range(HKV):
            for g in range(G):
                lg = torch.tensor([float(q[b, h, g] @ k[b, h, j]) for j in range(S)])
                if valid is not None:
                    lg[~valid[b]] = float("-inf")
                out[b, h] += torch.softmax(lg, 0) / G
    return out


# --- pure selectors against oracles ------------------------------------------------------------------


def test_group_probs_and_exact_topk_match_a_plain_loop():
    q, k, valid = tensors()
    probs = group_probs(logits(q, k), valid)
    torch.testing.assert_close(probs, naive_group_probs(q, k, valid))
    top = exact_topk(probs, 6, valid)
    for b in range(B):
        for h in range(HKV):
            want = sorted(range(S), key=lambda j: -float(probs[b, h, j]))[:6]
            assert sorted(top[b, h].tolist()) == sorted(want)
            assert valid[b, top[b, h]].all()


@pytest.mark.parametrize("page", [1, 4, 5, 16])
def test_quest_bound_is_an_upper_bound_per_head_and_page(page):
    q, k, valid = tensors(1)
    kmin, kmax = page_minmax(k, valid, page)
    bound = quest_bounds(q, kmin, kmax)  # [B, Hkv, G, P]
    lg = logits(q, k).masked_fill(~valid[:, None, None, :], float("-inf"))
    for p in range(bound.shape[-1]):
        true_max = lg[..., p * page : (p + 1) * page].amax(-1)
        assert (bound[..., p] >= true_max - 1e-5).all()
        if page == 1:  # a page of one key: the bound is exact
            torch.testing.assert_close(bound[..., p], true_max)
    assert (bound[1, :, :, 0] == float("-inf")).all() if page <= 5 else True  # a page of padding only


def test_quest_with_single_key_pages_selects_the_exact_top_k_of_summed_logits():
    q, k, valid = tensors(2)
    quest = get_sparse("quest", page=1)
    x = SelectInputs(q, k, valid, quest.build_index(k, valid, 0), 6, 0, 1, 0)
    got = quest.select(x).scores.topk(6, -1).indices
    want = logits(q, k).sum(2).masked_fill(~valid[:, None, :], float("-inf")).topk(6, -1).indices
    assert torch.equal(got.sort(-1).values, want.sort(-1).values)


def test_quest_index_extends_only_touched_pages():
    _, k, _ = tensors(3, padded=False)
    quest = get_sparse("quest", page=4)
    index, prev = quest.build_index(k[:, :, :30], None, 0), 30
    for n in (31, 32, 33, 37):
        index = quest.extend_index(index, k[:, :, :n], None, n - prev, 0)
        prev = n
        full = quest.build_index(k[:, :, :n], None, 0)
        assert torch.equal(index["min"], full["min"]) and torch.equal(index["max"], full["max"])


def test_hisa_equals_flat_top_k_when_every_block_is_kept():
    q, k, valid = tensors(4)
    n_blocks = -(-S // 8)
    scores = hierarchical_scores(q, k, valid, 8, n_blocks)
    torch.testing.assert_close(scores.masked_fill(~valid[:, None, :], 0), group_probs(logits(q, k), valid))
    flat = exact_topk(group_probs(logits(q, k), valid), 10, valid)
    assert torch.equal(exact_topk(scores, 10, valid).sort(-1).values, flat.sort(-1).values)


def test_hisa_reads_only_the_top_blocks_and_ranks_inside_them_exactly():
    q, k, valid = tensors(5)
    scores = hierarchical_scores(q, k, valid, 8, 2)
    means = block_means(k, valid, 8)
    coarse = logits(q, means).sum(2)
    top = coarse.topk(2, -1).indices
    for b in range(B):
        for h in range(HKV):
            inside = {j for blk in top[b, h].tolist() for j in range(blk * 8, min(S, blk * 8 + 8)) if valid[b, j]}
            finite = set(torch.isfinite(scores[b, h]).nonzero().flatten().tolist())
            assert finite == inside
            sub = sorted(inside)
            probs = torch.softmax(torch.stack([q[b, h] @ k[b, h, j] for j in sub], -1), -1).mean(0)
            torch.testing.assert_close(scores[b, h, sub], probs)


def test_block_means_ignore_padding():
    _, k, valid = tensors(6)
    means = block_means(k, valid, 8)
    torch.testing.assert_close(means[1, :, 0], k[1, :, 5:8].mean(1))
    torch.testing.assert_close(means[0, :, 4], k[0, :, 32:37].mean(1))


def test_channel_scores_are_the_attention_of_the_chosen_channels():
    q, k, valid = tensors(7)
    channels = torch.tensor([[1, 4, 6], [0, 2, 7]])
    labels = torch.stack([k[:, h][..., channels[h]] for h in range(HKV)], 1)
    got = channel_scores(q, labels, channels, valid)
    qc = torch.stack([q[:, h][..., channels[h]] for h in range(HKV)], 1)
    torch.testing.assert_close(got, naive_group_probs(qc, labels, valid))
    every = torch.arange(D).expand(HKV, D)
    torch.testing.assert_close(channel_scores(q, k, every, valid), group_probs(logits(q, k), valid))


def test_rope_chunks_pair_channel_f_with_f_plus_half():
    assert rope_chunk_channels(torch.tensor([[0, 3]]), 8).tolist() == [[0, 3, 4, 7]]


def sample_with_signal(channels: list[int], n: int = 64, t: int = 96) -> LayerSample:
    """q and k whose product lives in ``channels`` (plus small noise elsewhere)."""
    gen = torch.Generator().manual_seed(8)
    q, k = torch.randn(HKV, G, n, D, generator=gen) * 0.05, torch.randn(HKV, t, D, generator=gen) * 0.05
    q[..., channels] = torch.randn(HKV, G, n, len(channels), generator=gen) * 3
    k[..., channels] = torch.randn(HKV, t, len(channels), generator=gen) * 3
    return LayerSample(q, torch.arange(t - n, t), k, 1.0)


def test_double_sparsity_calibration_finds_the_outlier_channels():
    table = outlier_channels([sample_with_signal([1, 6])], 2)
    assert table.tolist() == [[[1, 6], [1, 6]]]


def test_fasa_calibration_finds_the_dominant_frequency_chunk():
    table = dominant_chunks([sample_with_signal([2, 2 + D // 2])], 1)  # chunk 2 = channels (2, 6)
    assert table.tolist() == [[[2], [2]]]


def test_tokenselect_votes_and_reuses_its_selection_while_queries_stay_similar():
    q, k, valid = tensors(9)
    ts_ = get_sparse("tokenselect", threshold=0.9)
    sel = ts_.select(SelectInputs(q, k, valid, {}, 6, 0, 1, 0))
    lg = logits(q, k).masked_fill(~valid[:, None, None, :], float("-inf"))
    torch.testing.assert_close(sel.scores, torch.softmax(lg, -1).sum((1, 2))[:, None])
    assert sel.scoring_read == 1.0
    again = ts_.select(SelectInputs(q * 1.01, k, valid, sel.index, 6, 0, 1, 1))  # same direction: reuse
    assert again.scoring_read == 0.0 and torch.equal(again.scores, sel.scores)
    other = ts_.select(SelectInputs(-q, k, valid, sel.index, 6, 0, 1, 2))  # a new direction: vote again
    assert other.scoring_read == 1.0


def test_tidal_selection_layer_picks_for_the_layers_after_it():
    q, k, valid = tensors(10)
    tidal = get_sparse("tidal", dense_layers=1, select_layers=(1,))
    shared: dict = {}
    assert tidal.select(SelectInputs(q, k, valid, {}, 6, 0, 4, 7, shared)).scores is None  # dense layer
    assert tidal.select(SelectInputs(q, k, valid, {}, 6, 1, 4, 7, shared)).scores is None  # selection layer
    reuse = tidal.select(SelectInputs(q * 0, k, valid, {}, 6, 2, 4, 7, shared))
    lg = logits(q, k).masked_fill(~valid[:, None, None, :], float("-inf"))
    torch.testing.assert_close(reuse.scores, torch.softmax(lg, -1).sum((1, 2))[:, None])
    assert reuse.scoring_read == 0.0
    assert tidal.select(SelectInputs(q, k, valid, {}, 6, 2, 4, 8, shared)).scores is None  # stale step: dense


def test_token_sparse_keeps_the_smallest_set_covering_the_mass():
    q, k, valid = tensors(11)
    sel = get_sparse("token_sparse", coverage=0.6).select(SelectInputs(q, k, valid, {}, 10, 0, 1, 0))
    probs = group_probs(logits(q, k), valid)
    for b in range(B):
        for h in range(HKV):
            order = probs[b, h].argsort(descending=True).tolist()
            want, mass = set(), 0.0
            for j in order:
                if mass >= 0.6:
                    break
                want.add(j)
                mass += float(probs[b, h, j])
            assert set(sel.keep[b, h].nonzero().flatten().tolist()) == want


def test_overlap_counts_recall_and_iou():
    sel, truth = torch.tensor([[[0, 1, 2, 3]]]), torch.tensor([[[2, 3, 4, 5]]])
    recall, iou = overlap(sel, truth, 8)
    assert recall.item() == 0.5 and iou.item() == pytest.approx(2 / 6)


# --- the sparse layer inside real forwards -----------------------------------------------------------


def feed(model, cache, tokens):
    with torch.inference_mode():
        return [model(tokens[:, i : i + 1], **with_cache(model, cache)).logits[:, -1] for i in range(tokens.shape[1])]


@pytest.mark.parametrize("method", list(SPARSE))
def test_reading_everything_is_bit_identical(arch, method):
    model = ts.prepare(make_model(arch))
    ref = twin(model)
    prompt, new = ids(1, 30), ids(2, 5)
    cache = SparseCache(model, method, read=1.0, **TINY.get(method, {}))
    with torch.inference_mode():
        first = model(prompt, **with_cache(model, cache)).logits
        ref_cache = DynamicCache(config=ref.config)
        assert torch.equal(first, ref(prompt, **with_cache(ref, ref_cache)).logits)
    assert all(torch.equal(a, b) for a, b in zip(feed(model, cache, new), feed(ref, ref_cache, new), strict=True))


@pytest.mark.parametrize("method", ["quest", "hisa", "token_sparse", "double_sparsity"])
def test_sparse_step_equals_full_attention_masked_to_the_read_slots(method):
    """Each decode step's logits equal the full model whose row for that step sees, in each layer and KV
    head, exactly the slots the method read."""
    model = ts.prepare(make_model("qwen2"))
    t, n = 40, 5
    prompt, new = ids(3, t), ids(4, n)
    cache = SparseCache(model, method, read=12, **TINY.get(method, {}))
    reads: dict[int, list[torch.Tensor]] = {layer.layer_idx: [] for layer in cache.sparse_layers}
    for layer in cache.sparse_layers:
        layer.on_select = lambda layer, idx: reads[layer.layer_idx].append(idx)
    with torch.inference_mode():
        model(prompt, **with_cache(model, cache))
    got = torch.stack(feed(model, cache, new), 1)

    masks = {}
    for layer_idx, steps in reads.items():
        assert len(steps) == n
        mask = torch.ones(t + n, t + n, dtype=torch.bool).tril().repeat(1, 2, 1, 1)
        for i, idx in enumerate(steps):
            row = torch.zeros(2, t + n + 1, dtype=torch.bool)
            row.scatter_(1, idx[0].where(idx[0] >= 0, t + n), True)  # -1 = not read
            mask[0, :, t + i] = row[:, : t + n]
        masks[layer_idx] = mask

    def oracle(module, query, key, value, attention_mask, **kwargs):
        g = query.shape[1] // key.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            query,
            key.repeat_interleave(g, 1),
            value.repeat_interleave(g, 1),
            attn_mask=masks[module.layer_idx].repeat_interleave(g, 1),
            scale=kwargs.get("scaling"),
        ).transpose(1, 2), None

    AttentionInterface.register("test_sparse_oracle", oracle)
    AttentionMaskInterface.register("test_sparse_oracle", sdpa_mask)
    ref = twin(model)
    ref.set_attn_implementation("test_sparse_oracle")
    with torch.inference_mode():
        want = ref(torch.cat([prompt, new], 1)).logits[:, t:]
    torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("method", list(SPARSE))
def test_every_sparse_method_generates_on_every_architecture(arch, method):
    model = ts.prepare(make_model(arch))
    cache = SparseCache(model, method, read=0.25, measure=True, **TINY.get(method, {}))
    with torch.inference_mode():
        out = model.generate(
            ids(5, 60), **with_cache(model, cache), max_new_tokens=8, min_new_tokens=8, do_sample=False
        )
    assert out.shape == (1, 68)
    assert [layer.n_held for layer in cache.sparse_layers] == [67] * len(cache.sparse_layers)  # nothing evicted
    r = cache.report()
    assert r["steps"] == 7
    assert 0 < r["attended_fraction"] <= 0.5 + 1e-6 or method == "tidal"
    assert 0 <= r["recall"] <= 1 and 0 <= r["iou"] <= 1 and 0 < r["attention_mass"] <= 1 + 1e-6


@pytest.mark.parametrize("method", ["token_sparse", "double_sparsity", "fasa"])
def test_left_padded_batch_matches_rows_alone(method):
    """Token-level selectors choose the same slots in a padded batch as alone (page- and block-based ones
    group slots by their position in the cache, which padding shifts, so only these can match exactly)."""
    model = ts.prepare(make_model("llama"))
    rows = [ids(6, 20)[0].tolist(), ids(7, 33)[0].tolist()]
    kw = dict(read=10, **TINY.get(method, {}))
    for both, alone in generate_padded_and_alone(model, lambda: SparseCache(model, method, **kw), rows, 6):
        assert torch.equal(both, alone)


@pytest.mark.parametrize("method", ["quest", "hisa", "tokenselect", "tidal"])
def test_padded_batch_never_reads_padding(method):
    model = ts.prepare(make_model("llama"))
    prompt, mask = left_pad([ids(6, 20)[0].tolist(), ids(7, 33)[0].tolist()], 0)
    cache = SparseCache(model, method, read=10, **TINY.get(method, {}))
    seen = []
    for layer in cache.sparse_layers:
        layer.on_select = lambda layer, idx: seen.append((idx, layer.valid))
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=mask,
            **with_cache(model, cache),
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
    assert out.shape == (2, 39) and seen
    for idx, valid in seen:
        assert (idx >= 0).all() and valid.gather(1, idx.flatten(1)).all()


def test_read_fraction_is_measured_from_what_was_read():
    model = ts.prepare(make_model("llama"))
    cache = SparseCache(model, "quest", read=8, page=4, sinks=0, window=0)
    with torch.inference_mode():
        model(ids(8, 63), **with_cache(model, cache))
    feed(model, cache, ids(9, 1))  # one step over 64 slots: 2/4 of the keys to score, 8 slots' K and V
    assert cache.report()["read_fraction"] == pytest.approx((0.5 * 64 + 2 * 8) / (2 * 64))
    assert cache.report()["attended_fraction"] == pytest.approx(8 / 64)


def test_calibration_is_cached_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSIEVE_CALIBRATION", str(tmp_path / "calibration"))  # the one store, here
    model = ts.prepare(make_model("llama"))
    SparseCache(model, "double_sparsity", calibration_tokens=64)
    files = list((tmp_path / "calibration").glob("double_sparsity-*.safetensors"))
    assert len(files) == 1
    before = files[0].stat().st_mtime_ns
    again = get_sparse("double_sparsity", calibration_tokens=64)
    again.setup(model)
    assert files[0].stat().st_mtime_ns == before and again._table.shape == (3, 2, 2)  # loaded, not recomputed
    other = ts.prepare(make_model("llama", seed=1))
    SparseCache(other, "double_sparsity", calibration_tokens=64)
    assert len(list((tmp_path / "calibration").glob("double_sparsity-*.safetensors"))) == 2


def test_sparse_errors():
    model = ts.prepare(make_model("llama"))
    with pytest.raises(ts.UnknownMethodError, match="unknown sparse-decoding method 'qest'"):
        SparseCache(model, "qest")
    with pytest.raises(ts.UnknownMethodError, match="bad parameter"):
        SparseCache(model, "quest", pages=3)
    for bad in (0, 0.0, 1.5, -2, True, "x"):
        with pytest.raises(ts.BudgetError, match="read budget"):
            SparseCache(model, "quest", read=bad)
    cache = SparseCache(model.config, "double_sparsity")  # a config cannot be calibrated
    with pytest.raises(ts.NotPreparedError, match="not calibrated"), torch.inference_mode():
        model(ids(10, 8), **with_cache(model, cache))


def test_adopting_a_prefilled_cache_equals_prefilling_it():
    model = ts.prepare(make_model("llama"))
    prompt, new = ids(11, 50), ids(12, 4)
    direct = SparseCache(model, "quest", read=12, page=4)
    with torch.inference_mode():
        model(prompt, **with_cache(model, direct))
    pre = ts.prefill(model, None, prompt)
    adopted = SparseCache(model, "quest", read=12, page=4).adopt(pre.cache)
    got, want = feed(model, adopted, new), feed(model, direct, new)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert pre.cache.layers[0].keys.shape[2] == 50  # the prefilled cache itself is untouched


def test_lserve_streams_half_the_heads_and_pages_the_rest_by_their_best_logical_page():
    q, k, valid = tensors(3)
    hkv = 4
    q, k = q.repeat(1, 2, 1, 1), k.repeat(1, 2, 1, 1)  # four KV heads: two stream, two page
    lserve = get_sparse("lserve", page=8, logical=4)
    x = SelectInputs(q, k, valid, lserve.build_index(k, valid, 0), 6, 0, 1, 0)
    got = lserve.select(x).scores
    stream = torch.tensor([True, False, False, True])  # round(0.5 x 4) heads, spread evenly: the first and last
    for b in range(B):
        for h in range(hkv):
            if stream[h]:
                assert got[b, h].tolist() == list(range(S))  # recency: the most recent slots are read
                continue
            bound = []  # Quest's bound per logical page of 4, summed over the group, by a plain loop
            for lo in range(0, S, 4):
                real = [j for j in range(lo, min(S, lo + 4)) if valid is None or valid[b, j]]
                if not real:
                    bound.append(float("-inf"))
                    continue
                lo_k, hi_k = k[b, h, real].min(0).values, k[b, h, real].max(0).values
                bound.append(sum(float(torch.maximum(q[b, h, g] * lo_k, q[b, h, g] * hi_k).sum()) for g in range(G)))
            for j in range(S):
                first = j // 8 * 2  # the physical page's first logical page
                want = max(bound[first : first + 2])
                assert got[b, h, j].item() == (want if want < -1e30 else pytest.approx(want, rel=1e-5, abs=1e-5))
