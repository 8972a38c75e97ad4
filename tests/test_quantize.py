"""Quantization consumer: GPTQ reference, token weights, rotation, files, CLI."""

from __future__ import annotations

import copy

import pytest
import torch

from tokensieve.errors import ParameterError
from tokensieve.quantize.gptq import Hessian, QuantSpec, fake_quant, gptq, layer_loss, minmax_params, rtn


def _layer(rows: int = 32, cols: int = 256, tokens: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    # correlated inputs with uneven scales: where error feedback through H^-1 pays off
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.2
    x[:, :8] *= 10
    return w, x


@pytest.mark.parametrize("bits,group", [(2, 0), (3, 0), (3, 64), (4, 32), (8, 0)])
def test_gptq_beats_rtn_on_its_calibration_loss(bits: int, group: int) -> None:
    w, x = _layer()
    h = Hessian(w.shape[1])
    h.add(x)
    spec = QuantSpec(bits=bits, group=group)
    loss_rtn = layer_loss(w, rtn(w, spec).dequantize(), h.h)
    loss_gptq = layer_loss(w, gptq(w, h.h, spec).dequantize(), h.h)
    assert loss_gptq < 0.8 * loss_rtn


@pytest.mark.parametrize("bits,group", [(3, 0), (4, 32)])
def test_gptq_codes_do_not_depend_on_the_lazy_block_size(bits: int, group: int) -> None:
    """Lazy batching only defers the error feedback to the columns after a block; it is exact, so the codes are
    the same for every block size. A broken block-to-block carry (the deferred update dropped or misapplied)
    still beats RTN by the loose bound above, but changes the codes here."""
    w, x = _layer(rows=16, cols=96, tokens=256)
    h = Hessian(w.shape[1])
    h.add(x)
    spec = QuantSpec(bits=bits, group=group)
    whole = gptq(w, h.h, spec, block=w.shape[1]).codes  # one block: no deferred update at all
    for block in (8, 32):
        assert torch.equal(gptq(w, h.h, spec, block=block).codes, whole), block


def test_clipping_search_lowers_rtn_weight_error() -> None:
    w, _ = _layer()
    w[:, 0] *= 20  # an outlier column stretches every row's range
    plain = (rtn(w, QuantSpec(bits=3)).dequantize() - w).pow(2).sum()
    clipped = (rtn(w, QuantSpec(bits=3, clip=True)).dequantize() - w).pow(2).sum()
    assert clipped < plain


@pytest.mark.parametrize("bits,group", [(2, 0), (3, 16), (4, 64), (8, 32)])
def test_codes_round_trip(bits: int, group: int) -> None:
    w, _ = _layer(rows=8, cols=128)
    spec = QuantSpec(bits=bits, group=group)
    q = rtn(w, spec)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
    g = group or w.shape[1]
    for c in range(0, w.shape[1], g):  # each group's codes rebuild the quantizer's own output exactly
        scale, zero = minmax_params(w[:, c : c + g], spec)
        assert torch.equal(q.dequantize()[:, c : c + g], fake_quant(w[:, c : c + g], scale, zero, spec.maxq))
    # requantizing the dequantized weight with its own grid gives back the same codes
    scale, zero = q.scale.repeat_interleave(g, 1), q.zero.repeat_interleave(g, 1)
    rebuilt = torch.clamp(torch.round(q.dequantize() / scale) + zero, 0, spec.maxq)
    assert torch.equal(rebuilt.to(torch.uint8), q.codes)


def test_bad_spec_is_one_clear_error() -> None:
    with pytest.raises(ParameterError, match="bits"):
        QuantSpec(bits=5)
    with pytest.raises(ParameterError, match="divide"):
        rtn(torch.randn(4, 100), QuantSpec(bits=4, group=64))


# --- the model-level pass: token weights and rotation on tiny random models ---

from conftest import make_model  # noqa: E402
from tokensieve.quantize.engine import quantize_gptq, quantize_rtn  # noqa: E402
from tokensieve.quantize.rotate import (  # noqa: E402
    RotatedOutput,
    RotationError,
    hadamard,
    placement_of,
    rotate,
    rotation_matrix,
)
from tokensieve.quantize.weights import attncon, scale_range, weight_source  # noqa: E402


def _randomise_norms(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25)


def _calib(vocab: int = 128, n: int = 2, t: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (1, t), generator=g) for _ in range(n)]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_uniform_token_weights_reproduce_plain_gptq_bit_for_bit(arch: str) -> None:
    plain, weighted = make_model(arch), make_model(arch)
    calib = _calib()
    quantize_gptq(plain, calib, QuantSpec(bits=3, group=32))
    ones = [weight_source("uniform")(weighted, ids) for ids in calib]
    quantize_gptq(weighted, calib, QuantSpec(bits=3, group=32), ones)
    for (n, a), (_, b) in zip(plain.state_dict().items(), weighted.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_token_weights_change_the_hessian_as_the_rule_says() -> None:
    x = torch.randn(6, 16)
    w = torch.tensor([1.0, 3.0, 0.5, 0.5, 1.0, 0.0])
    h = Hessian(16)
    h.add(x, w)
    assert torch.allclose(h.h, sum(wt * torch.outer(xt, xt) for wt, xt in zip(w, x, strict=True)), atol=1e-5)


def test_attncon_oracle_on_a_tiny_model() -> None:
    """attncon = attention received summed over heads and queries / queries that see the token, in [1, 3]."""
    model = make_model("llama")
    ids = _calib(n=1, t=12)[0]
    w = attncon(model, ids)
    assert w.shape == (3, 12) and torch.allclose(w.mean(-1), torch.ones(3))
    out = model(input_ids=ids, output_attentions=True, use_cache=False)  # oracle: the full T x T maps
    for layer, att in enumerate(out.attentions):
        received = att[0].sum(0).sum(0) / torch.arange(12, 0, -1)
        expect = scale_range(received)
        expect = expect / expect.mean()
        assert torch.allclose(w[layer], expect, atol=1e-4)


@pytest.mark.parametrize("source", ["snapkv", "surprise", "kvzip", "lagkv"])
def test_kv_score_as_weight_source_and_unknown_name(source: str) -> None:
    # surprise and kvzip score over the whole prefill; lagkv marks its always-kept tokens +inf
    model = make_model("llama")
    w = weight_source(source)(model, _calib(n=1, t=40)[0])
    assert w.shape == (3, 40) and torch.isfinite(w).all() and float(w.min()) > 0
    assert torch.allclose(w.mean(-1), torch.ones(3)) and bool((w.amax(-1) / w.amin(-1) <= 3.0 + 1e-4).all())
    with pytest.raises(Exception, match="token-weight source"):
        weight_source("nope")
    with pytest.raises(ParameterError, match="changes the prefill"):
        weight_source("act")


def test_surprise_weights_follow_the_token_loss() -> None:
    """Oracle: surprise weights are the per-token NLL under the model, min-max scaled to [1, 3], mean 1."""
    model = make_model("llama")
    ids = _calib(n=1, t=24)[0]
    w = weight_source("surprise")(model, ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # test oracle: the full logits
    nll = torch.empty(24)
    nll[1:] = -logp[:-1].gather(1, ids[0, 1:, None])[:, 0]
    nll[0] = nll[1:].max()  # nothing predicts the first token: the row's largest NLL
    expect = scale_range(nll)
    assert torch.allclose(w[0], expect / expect.mean(), atol=1e-4)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("gemma3", True)])
def test_rotation_is_exact_in_full_precision(arch: str, tied: bool) -> None:
    model = make_model(arch)
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    _randomise_norms(model)
    ids = _calib(n=1, t=20)[0]
    with torch.no_grad():
        before = model(input_ids=ids).logits
        rotate(model, seed=1, placement="stream")
        after = model(input_ids=ids).logits
        changed = model.get_input_embeddings().weight
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)
    assert model.lm_head.weight is not changed  # untied: the head carries the fused final norm
    # the stream really is rotated: embeddings moved, and every reader norm is now a pure normalisation
    assert not torch.allclose(make_model(arch).get_input_embeddings().weight, changed)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_inputs_placement_is_exact_and_leaves_the_stream_alone(arch: str) -> None:
    model = make_model(arch)
    _randomise_norms(model)
    emb = model.get_input_embeddings().weight.detach().clone()
    ids = _calib(n=1, t=20)[0]
    with torch.no_grad():
        before = model(input_ids=ids).logits
        rotate(model, seed=1, placement="inputs")
        after = model(input_ids=ids).logits
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)
    assert torch.equal(model.get_input_embeddings().weight, emb)  # the stream is not rotated
    layer = model.model.layers[0]
    assert isinstance(layer.input_layernorm, RotatedOutput) and not isinstance(model.model.norm, RotatedOutput)


def test_auto_placement_follows_the_structure_and_bad_names_fail() -> None:
    # Gemma-3's post-norms already cost a full-precision rotation in the stream placement
    assert placement_of(make_model("gemma3")) == "inputs"
    assert placement_of(make_model("llama")) == "stream"  # gains all 1: nothing silenced
    assert placement_of(_massive_channel("llama")) == "inputs"  # a gain of 0 silences channel 5
    assert placement_of(make_model("llama"), "inputs") == "inputs"
    with pytest.raises(RotationError, match="placement"):
        rotate(make_model("llama"), placement="middle")


def _massive_channel(arch: str, c: int = 5):
    """A residual channel ~100x the others that every reader norm's gain sets to exactly 0 (Gemma-3 270M:
    channel 400 of every pre-feed-forward norm)."""
    model = make_model(arch)
    zero = -1.0 if arch == "gemma3" else 0.0  # Gemma's gain is 1 + w
    with torch.no_grad():
        model.get_input_embeddings().weight[:, c] = 300.0
        for name, m in model.named_modules():
            if name.endswith("layernorm") or name == "model.norm":
                m.weight[c] = zero
    return model


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_inputs_rotation_survives_a_zeroed_massive_channel(arch: str) -> None:
    """The defect that collapsed Gemma-3 (perplexity 3e16 at 3 bits): with the gains fused, the stream
    rotation spreads the massive channel over every input column, and every rounding error meets it."""
    base = _massive_channel(arch)
    ids = _calib(n=1, t=32)[0]
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    err = {}
    for placement in (None, "stream", "auto"):
        model = copy.deepcopy(base)
        if placement:
            rotate(model, seed=0, placement=placement)
        quantize_rtn(model, QuantSpec(bits=3, group=16))
        with torch.no_grad():
            err[placement] = float((model(input_ids=ids).logits - ref).norm() / ref.norm())
    assert err["auto"] < 2 * err[None] + 1e-3  # auto = inputs; measured: equal to unrotated (0.012 / 1e-4)
    assert err["stream"] > 20 * err["auto"] + 0.1  # measured: 10.5 / 0.31


def test_rotation_matrices_are_orthogonal_and_hadamard_needs_a_power_of_two() -> None:
    for q in (hadamard(64), rotation_matrix(64, "hadamard", 2), rotation_matrix(48, "auto", 0)):
        assert torch.allclose(q @ q.T, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-10)
    with pytest.raises(RotationError, match="power-of-two"):
        hadamard(576)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_saved_codes_load_back_to_the_same_model(arch: str, tmp_path) -> None:
    from tokensieve.quantize.io import load, save
    from tokensieve.quantize.run import Recipe

    model = make_model(arch)
    _randomise_norms(model)
    q = rotate(model, seed=2)  # auto: inputs on gemma3, stream on llama; the file must say which
    result = quantize_gptq(model, _calib(), QuantSpec(bits=3, group=16))
    result.placement = placement_of(make_model(arch))
    save(tmp_path, "tiny", Recipe("gptq", 3, 16), result, q)
    fresh = make_model(arch)
    _randomise_norms(fresh)
    loaded, _, meta = load(tmp_path, base=fresh)
    assert meta["bits"] == "3" and meta["model"] == "tiny"
    for n, p in model.state_dict().items():
        assert torch.equal(p, loaded.state_dict()[n]), n
    ids = _calib(n=1, t=16)[0]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_cli_bad_input_exits_2(capsys) -> None:
    from tokensieve.cli import main

    assert main(["quantize", "--bits", "5", "--out", "unused"]) == 2
    assert "--bits 5" in capsys.readouterr().err
    assert main(["quantize", "--method", "rtn", "--weights", "attncon", "--out", "unused"]) == 2
    assert main(["quantize", "--method", "awq", "--out", "unused"]) == 2


@pytest.mark.real
def test_real_rotation_is_exact_and_cli_round_trips(smollm2, tmp_path, capsys) -> None:
    import json

    from tokensieve.cli import main
    from tokensieve.quantize.io import load

    model, tok = smollm2
    rotated = copy.deepcopy(model)
    ids = tok("The pass key is 68213. Remember it.", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(input_ids=ids).logits
        rotate(rotated, seed=0)
        after = rotated(input_ids=ids).logits
    assert torch.allclose(after, before, atol=1e-3, rtol=1e-4)
    assert torch.equal(after.argmax(-1), before.argmax(-1))

    assert main(["quantize", "--method", "rtn", "--bits", "4", "--group", "64", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["layers"] == 30 * 7
    loaded, _, meta = load(tmp_path)
    assert meta["model"] == "smollm2" and meta["bits"] == "4"
    lin = loaded.model.layers[3].mlp.down_proj.weight
    assert torch.equal(lin, rtn(model.model.layers[3].mlp.down_proj.weight, QuantSpec(4, 64)).dequantize())


@pytest.mark.real
def test_evaluation_domains_are_disjoint_from_calibration(smollm2) -> None:
    from tokensieve.errors import CalibrationError
    from tokensieve.quantize.data import calibration_text, evaluation_text, evaluation_windows

    _, tok = smollm2
    cal = calibration_text()
    prose, docs = evaluation_windows(tok, 2, 128), evaluation_windows(tok, 2, 128, domain="docs")
    assert not torch.equal(prose[0], docs[0])
    for w in prose + docs:  # no evaluation window is a piece of the calibration text
        assert tok.decode(w[0, 8:40]) not in cal
    assert evaluation_text("docs") in evaluation_text("prose")  # prose = the essays, then the same topics
    with pytest.raises(CalibrationError, match="unknown evaluation domain"):
        evaluation_text("news")


@pytest.mark.real
def test_both_domain_calibration_holds_out_its_essays(smollm2) -> None:
    """source="both": half the windows are essay text, half topics; the held-out essays share no 16 tokens."""
    from tokensieve.errors import CalibrationError
    from tokensieve.quantize.data import calibration_windows, evaluation_windows
    from tokensieve.runtime.corpus import paragraphs

    _, tok = smollm2
    docs = calibration_windows(tok, 8, 256, seed=1)
    both = calibration_windows(tok, 8, 256, seed=1, source="both")
    essays_text = "\n\n".join(paragraphs())
    in_essays = [tok.decode(w[0, 8:40]) in essays_text for w in both]
    assert in_essays == [False] * 4 + [True] * 4
    assert all(torch.equal(a, b) for a, b in zip(docs[:4], both[:4], strict=True))  # the same seeded offsets
    held = evaluation_windows(tok, 4, 512, domain="essays")
    assert len(held) == 2 and all(tok.decode(w[0, 8:40]) in essays_text for w in held)
    runs = {tuple(w[0, i : i + 16].tolist()) for s in range(3) for w in calibration_windows(tok, 8, 512, s, "both")
            for i in range(497)}  # fmt: skip
    assert not any(tuple(w[0, i : i + 16].tolist()) in runs for w in held for i in range(497))
    with pytest.raises(CalibrationError, match="unknown calibration text"):
        calibration_windows(tok, 8, 256, source="news")


@pytest.mark.real
def test_real_gemma_rotation_is_exact_and_does_not_collapse(gemma3_270m) -> None:
    """Gemma-3 270M zeroes its massive residual channels with norm gains of 0: the auto placement
    (inputs) must rotate it exactly and quantize no worse than unrotated round-to-nearest."""
    from tokensieve.quantize.data import evaluation_windows
    from tokensieve.quantize.engine import quantize_rtn
    from tokensieve.quantize.evaluate import compare

    model, tok = gemma3_270m
    assert placement_of(model) == "inputs"
    window = evaluation_windows(tok, 1, 512, domain="docs")
    kl = {}
    for placement in (None, "auto"):
        quant = copy.deepcopy(model)
        if placement:
            ids = window[0][:, :64]
            with torch.no_grad():
                before = model(input_ids=ids).logits[0, -1]
                rotate(quant, seed=0, placement=placement)
                after = quant(input_ids=ids).logits[0, -1]
            assert torch.allclose(after, before, atol=1e-3 * float(before.abs().max()))
        quantize_rtn(quant, QuantSpec(bits=3, group=64))
        kl[placement] = compare(quant, model, window).kl
        del quant
    assert kl["auto"] < 1.25 * kl[None], kl  # the stream placement measured KL 36 (perplexity 3e16)
