"""Vision-language pruning on tiny random LLaVA models: oracles for each rule, positions, masks, generate,
exactness with nothing pruned. (No vision-language weights ship offline: quality is not measured here.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    CLIPVisionConfig,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.errors import (
    BatchError,
    BudgetError,
    EngagementError,
    InvalidKeepError,
    ParameterError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)
from tokensieve.vlm import VLM_METHODS, Inputs, get_vlm_method, relevance, sieve
from tokensieve.vlm.methods.idpruner import mmr_select
from tokensieve.vlm.methods.mmtok import coverage_select
from tokensieve.vlm.methods.todre import k_center

IMG, N_IMG, LAYERS = 127, 16, 4


@pytest.fixture(scope="module")
def llava() -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=28, patch_size=7)  # fmt: skip
    text = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMG, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("sdpa")
    return model


def _batch(pad: bool = True) -> dict[str, Tensor]:
    """Two prompts (the second left-padded by 3) with one image of 16 tokens each, and their positions."""
    long = [1, 5, 6, 9] + [IMG] * N_IMG + [7, 8, 9, 10, 11]
    short = [1, 5] + [IMG] * N_IMG + [12, 13, 7, 8]
    rows = [long, [0] * (len(long) - len(short)) + short] if pad else [long]
    ids = torch.tensor(rows)
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([0, len(long) - len(short)][: len(rows)])[:, None]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    px = torch.randn(len(rows), 3, 28, 28, generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "pixel_values": px}


def _oracle(model, batch: dict[str, Tensor], kept0: Tensor, kept: Tensor, at: int) -> Tensor:
    """The plain model with nothing removed: a token dropped before the LLM is hidden as a key in every layer,
    one dropped at layer ``at`` from that layer on, by a 4-D mask handed to each decoder layer. Same
    positions, so kept tokens see exactly what they would see in the pruned model. Returns all logits."""
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    b, t = ids.shape
    rows = torch.arange(b)[:, None]
    in0 = torch.zeros(b, t, dtype=torch.bool)
    in0[rows, kept0] = True
    in1 = torch.zeros(b, t, dtype=torch.bool)
    in1[rows, kept] = True
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None] & valid[:, None, :]
    eye = torch.eye(t, dtype=torch.bool)[None]  # padding rows see themselves (never read): no NaN
    early, late = (causal & in0[:, None, :]) | eye, (causal & in1[:, None, :]) | eye
    layers = compat.decoder_layers(model)

    def hook(i: int):
        def pre(module, args, kwargs):
            kwargs["attention_mask"] = (early if i < at else late)[:, None]
            return args, kwargs

        return pre

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            return model(**batch).logits
    finally:
        for h in handles:
            h.remove()


def _kept0(s) -> Tensor:
    p = s.prompt
    return p.kept0 if p.kept0 is not None else torch.arange(p.length).expand(p.image0.shape[0], -1)


CASES = [("fastv", {"keep": 0.5, "at": 2}, 2), ("todre", {"keep": 0.5, "late_keep": 0.5, "at": 2}, 2),
         ("idpruner", {"keep": 0.25}, LAYERS), ("mmtok", {"keep": 0.25}, LAYERS)]  # fmt: skip


@pytest.mark.parametrize(("method", "params", "at"), CASES)
def test_pruned_forward_matches_the_masking_oracle_with_padding(llava, method, params, at) -> None:
    batch = _batch()
    with torch.no_grad(), sieve(llava, method, **params) as s:
        out = llava(**batch).logits
    kept, kept0 = s.kept, _kept0(s)
    n_img = s.counts
    assert n_img["image_tokens"] == N_IMG and n_img["after_layer_k"] < N_IMG, n_img
    assert out.shape[1] == kept.shape[1] < batch["input_ids"].shape[1]
    assert (batch["input_ids"].gather(1, kept) != IMG).sum(1).tolist() == [9, 9]  # every text token and pad stays
    want = _oracle(llava, batch, kept0, kept, at).gather(1, kept[..., None].expand(-1, -1, 128))
    valid = batch["attention_mask"].bool().gather(1, kept)
    torch.testing.assert_close(out[valid], want[valid], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "params", "at"), CASES)
def test_generate_matches_the_oracle_step_by_step(llava, method, params, at) -> None:
    batch = _batch()
    gen = {k: v for k, v in batch.items() if k != "position_ids"}
    with torch.no_grad(), sieve(llava, method, **params) as s:
        # the image placeholder is suppressed: a random model may emit it, and the oracle's full-sequence pass
        # would then see one placeholder more than the image has features (LLaVA rejects that)
        out = llava.generate(**gen, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=[IMG])  # fmt: skip
    t = batch["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):  # teacher-forced on the pruned model's own tokens
        ids = out.sequences[:, : t + step]
        mask = torch.cat([batch["attention_mask"], torch.ones(2, step, dtype=torch.long)], 1)
        full = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                "pixel_values": batch["pixel_values"]}  # fmt: skip
        new = torch.arange(t, t + step).expand(2, -1)
        want = _oracle(llava, full, torch.cat([_kept0(s), new], 1), torch.cat([s.kept, new], 1), at)[:, -1]
        torch.testing.assert_close(logits, want, atol=2e-5, rtol=1e-4)


def test_batched_padded_rows_match_each_row_alone(llava) -> None:
    batch = _batch()
    with torch.no_grad(), sieve(llava, "fastv", keep=0.25, at=1) as s:
        both = llava(**batch).logits[:, -1]
    short = {k: v[1:, 3:] if v.dim() == 2 else v[1:] for k, v in batch.items()}
    short["position_ids"] = torch.arange(short["input_ids"].shape[1])[None]
    with torch.no_grad(), sieve(llava, "fastv", keep=0.25, at=1) as s1:
        alone = llava(**short).logits[:, -1]
    torch.testing.assert_close(both[1:], alone, atol=2e-5, rtol=1e-4)
    assert torch.equal(s.kept[1:, 3:] - 3, s1.kept)  # the same image tokens chosen, shifted by the padding


def test_nothing_pruned_is_bit_identical(llava) -> None:
    batch = _batch()
    gen = {k: v for k, v in batch.items() if k != "position_ids"}
    kw = {"max_new_tokens": 4, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        plain, plain_gen = llava(**batch).logits, llava.generate(**gen, **kw)
    for method in VLM_METHODS:
        params = {"keep": 1.0, **({"late_keep": 1.0} if method == "todre" else {})}
        with torch.no_grad(), sieve(llava, method, **params) as s:
            got, got_gen = llava(**batch).logits, llava.generate(**gen, **kw)
        assert torch.equal(got, plain), method
        assert torch.equal(got_gen.sequences, plain_gen.sequences), method
        assert all(torch.equal(a, b) for a, b in zip(got_gen.logits, plain_gen.logits, strict=True)), method
        assert s.counts == {"image_tokens": N_IMG, "before_llm": N_IMG, "after_layer_k": N_IMG}


def test_fastv_keeps_the_image_tokens_the_last_token_attends_to_most(llava) -> None:
    batch = _batch(pad=False)
    llava.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = llava(**batch, output_attentions=True).attentions[1]  # layer K-1 = 1: [B, H, T, T]
    finally:
        llava.set_attn_implementation("sdpa")
    last = attn[0, :, -1].mean(0)  # oracle: the full matrix's last row, head mean
    img = (batch["input_ids"][0] == IMG).nonzero().flatten()
    want = set(img[last[img].topk(6).indices].tolist())
    with torch.no_grad(), sieve(llava, "fastv", keep=6 / N_IMG, at=2) as s:
        llava(**batch)
    got = {int(i) for i in s.kept[0] if batch["input_ids"][0, i] == IMG}
    assert got == want


def test_kept_tokens_keep_their_original_positions(llava) -> None:
    batch = _batch()
    seen = {}
    layer = compat.decoder_layers(llava)[2]
    def grab(module, args, kwargs) -> None:
        seen["pos"] = kwargs["position_ids"]

    with torch.no_grad(), sieve(llava, "todre", keep=0.5, late_keep=0.5, at=2) as s:
        tap = layer.register_forward_pre_hook(grab, with_kwargs=True)  # after the sieve's: sees what the layer gets
        try:
            llava(**batch)
        finally:
            tap.remove()
    assert torch.equal(seen["pos"], batch["position_ids"].gather(1, s.kept))


# ---- the selection rules against loops and brute force on small tensors
def _rand(b: int, n: int, d: int, seed: int) -> Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_relevance_is_each_image_tokens_best_text_cosine() -> None:
    img, txt = _rand(1, 5, 4, 0), _rand(1, 3, 4, 1)
    valid = torch.tensor([[True, False, True]])
    got = relevance(Inputs(img, txt, valid))
    want = [max(float(F.cosine_similarity(img[0, i], txt[0, j], dim=0)) for j in (0, 2)) for i in range(5)]
    torch.testing.assert_close(got[0].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_mmr_matches_a_loop_and_its_extremes() -> None:
    for seed in range(5):
        x = _rand(1, 9, 3, seed)
        imp = torch.rand(1, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        u = F.normalize(x[0], dim=-1)
        sim = (u @ u.T)[None]
        got = mmr_select(imp, sim, 4, 0.6)[0].tolist()
        norm = (imp[0] - imp[0].min()) / (imp[0].max() - imp[0].min() + 1e-6)
        chosen = [int(norm.argmax())]
        while len(chosen) < 4:
            rest = [i for i in range(9) if i not in chosen]
            chosen.append(max(rest, key=lambda i: 0.6 * norm[i] - 0.4 * max(float(sim[0, i, j]) for j in chosen)))
        assert got == chosen
        assert sorted(mmr_select(imp, sim, 4, 1.0)[0].tolist()) == sorted(imp[0].topk(4).indices.tolist())


def test_coverage_greedy_matches_a_loop_and_the_1_minus_1_over_e_bound() -> None:
    for seed in range(5):
        cover = torch.rand(1, 7, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        weight = torch.rand(1, 7, generator=torch.Generator().manual_seed(seed + 9), dtype=torch.float64)
        k = 3

        def f(sub, cover=cover, weight=weight) -> float:
            return float(sum(weight[0, t] * max(cover[0, t, j] for j in sub) for t in range(7))) if sub else 0.0

        got = coverage_select(cover, weight, k)[0].tolist()
        chosen: list[int] = []
        for _ in range(k):
            chosen.append(max((j for j in range(8) if j not in chosen), key=lambda j: f([*chosen, j])))
        assert got == chosen
        best = max(f(list(sub)) for sub in itertools.combinations(range(8), k))
        assert f(got) >= (1 - 1 / math.e) * best - 1e-12


def test_k_center_matches_a_loop_and_the_factor_2_bound() -> None:
    for seed in range(5):
        x = _rand(1, 8, 3, seed)
        u = F.normalize(x[0], dim=-1)
        sim = (u @ u.T)[None]
        dist = 1 - sim[0]
        got = k_center(sim, 3, torch.tensor([seed % 8]))[0].tolist()
        chosen = [seed % 8]
        while len(chosen) < 3:
            chosen.append(max((i for i in range(8) if i not in chosen), key=lambda i: min(dist[i, c] for c in chosen)))
        assert got == chosen

        def radius(centers, dist=dist) -> float:
            return max(min(float(dist[i, c]) for c in centers) for i in range(8))

        best = min(radius(list(c)) for c in itertools.combinations(range(8), 3))
        assert radius(got) <= 2 * best + 1e-12  # farthest-first is a 2-approximation of the best radius


# ---- bad input, clean-up, engagement
def test_bad_input_gets_typed_errors(llava) -> None:
    with pytest.raises(InvalidKeepError, match="outside"):
        get_vlm_method("fastv", keep=0.0)
    with pytest.raises(InvalidKeepError):
        get_vlm_method("todre", late_keep=1.5)
    with pytest.raises(ParameterError, match="lam"):
        get_vlm_method("idpruner", lam=2.0)
    with pytest.raises(UnknownMethodError, match="fastv"):
        get_vlm_method("nope")
    with pytest.raises(BudgetError, match="outside the LLM's layers"), sieve(llava, "fastv", at=LAYERS):
        pass
    plain = LlamaForCausalLM(llava.config.text_config)
    with pytest.raises(UnsupportedArchitectureError, match="LLaVA-style"), sieve(plain, "fastv"):
        pass
    batch = _batch()
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][0, 3], batch["input_ids"][1, -6] = IMG, 7  # 17 and 15 image tokens: LLaVA's total still fits
    with pytest.raises(BatchError, match="same number of image tokens"), sieve(llava, "mmtok"), torch.no_grad():
        llava(**batch)
    cache = DynamicCache()
    one = {k: v[:1] for k, v in _batch(pad=False).items() if k != "position_ids"}
    with torch.no_grad(), sieve(llava, "idpruner"):
        llava(input_ids=torch.tensor([[1, 5]]), **compat.with_cache(llava, cache))
        with pytest.raises(UnsupportedArchitectureError, match="non-empty cache"):
            llava(**one, **compat.with_cache(llava, cache))


def test_hooks_and_attention_are_gone_after_the_block(llava) -> None:
    before = llava.config.text_config._attn_implementation

    def hooked() -> dict[str, int]:  # transformers keeps hooks of its own (output capture): count, don't assume none
        return {n: len(m._forward_pre_hooks) + len(m._forward_hooks) for n, m in llava.named_modules()}

    had = hooked()
    with torch.no_grad(), sieve(llava, "todre", keep=0.5) as s:
        llava(**_batch())
        assert llava.config.text_config._attn_implementation == hooks.ATTENTION
    assert llava.config.text_config._attn_implementation == before
    assert hooked() == had
    assert s.counts["before_llm"] == 8 and s.counts["after_layer_k"] == 4


def test_an_attention_that_bypasses_tokensieve_is_an_error(llava) -> None:
    with torch.no_grad(), sieve(llava, "fastv", keep=0.5) as s:
        compat.restore_attention(s._attn)  # as if the model called SDPA directly, not through the interface
        with pytest.raises(EngagementError, match="never reached"):
            llava(**_batch())
