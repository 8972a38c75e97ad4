"""Rotate what the linears read (QuaRot / RSQ's "rotate" step), exactly in full precision.

Two placements, both checked exact before anything is quantized:

- ``stream``: an RMSNorm with its gain set to identity commutes with any orthogonal ``Q`` (it only
  divides by the norm), so after fusing each norm's gain into the linears it feeds, the whole residual
  stream is carried as ``h Q``: embeddings ``E Q``, linears that read the stream ``W Q``, linears that
  write it ``Q^T W``. Free at run time; QuaRot's choice.
- ``inputs``: each decoder norm that feeds linears gets a full-precision output rotation
  ``norm(x) Q`` and those linears become ``W Q``; the stream, the norms' gains and every other weight
  stay as they are. One ``d x d`` matmul per norm.

``auto`` picks ``inputs`` where a decoder norm's gain silences a channel (below 1% of its mean |gain|)
or where the stream has norms between a linear and the residual, and ``stream`` otherwise. A gain of ~0
is how a model switches off a channel it keeps large in the stream (Gemma-3 270M: channel 400 of every
pre-feed-forward norm has gain exactly 0 where the stream is ~100x its median; SmolLM2 has one such
channel in most layers). Fused into the weights and rotated, the silencing no longer survives rounding:
every weight's rounding error meets the large channel. Measured at 3 bits, group 64: Gemma-3's
round-to-nearest relative output error per linear grows from 0.2 to 2-8 (perplexity 3e16) with the
stream placement and stays at 0.2 with ``inputs``; SmolLM2's GPTQ+rotation KL to full precision on the
essays drops from 1.15 (stream) to 0.96 (inputs), 3 seeds (benchmarks/quant/results). Gemma's
post-attention / post-feed-forward norms already cost two ``d x d`` matmuls per layer in the stream
placement (a per-channel gain after a rotation is not a rotation), so there ``inputs`` costs nothing
extra; elsewhere it costs those two matmuls per layer.

Where each weight sits is found from the module structure, not from the model type: one traced
forward records which norm's output feeds which linear and which linear's output feeds which norm.
Whether a norm's gain is ``w`` or ``1 + w`` (Gemma) is probed, not assumed; tied embeddings are untied
(stream placement only: the head carries the fused final norm).

``rotate`` checks the logits of a probe input before and after and raises ``RotationError`` if the
rotated model is not the same function, so nothing that cannot be rotated exactly passes silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokensieve.compat import decoder_layers
from tokensieve.errors import TokenSieveError


class RotationError(TokenSieveError, ValueError):
    pass


def hadamard(n: int) -> Tensor:
    """Sylvester's Hadamard matrix of order ``n`` (a power of two), normalised to be orthogonal."""
    if n < 1 or n & (n - 1):
        raise RotationError(f"a Hadamard rotation needs a power-of-two width, not {n}: use rotation='random'")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def random_orthogonal(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed: fix QR's sign ambiguity


def rotation_matrix(n: int, kind: str = "auto", seed: int = 0) -> Tensor:
    """``hadamard`` (randomised by a seeded sign flip), ``random`` orthogonal, or ``auto``: Hadamard
    where the width is a power of two (SmolLM2's 576 and Gemma-3's 640 are not), random otherwise."""
    if kind == "auto":
        kind = "hadamard" if n & (n - 1) == 0 else "random"
    if kind == "random":
        return random_orthogonal(n, seed)
    if kind == "hadamard":
        signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
        return signs[:, None] * hadamard(n)
    raise RotationError(f"unknown rotation {kind!r}: use auto, hadamard or random")


class RotatedOutput(nn.Module):
    """``module(x) @ Q`` in full precision: a norm's output in the rotated basis (see the placements)."""

    def __init__(self, module: nn.Module, q: Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("rotation", q.float())

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x)
        return (y.float() @ self.rotation).to(y.dtype)


@dataclass
class Structure:
    readers: dict[str, list[str]] = field(default_factory=dict)  # norm -> the linears it feeds
    writers: list[str] = field(default_factory=list)  # linears adding straight into the stream
    writer_norms: list[str] = field(default_factory=list)  # norms between a linear and the stream


def _norms(model: nn.Module, width: int) -> dict[str, nn.Module]:
    """Leaf modules that normalise a ``width``-wide vector with a per-channel gain."""
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        leaf = not any(True for _ in m.children())
        vector = isinstance(w, nn.Parameter) and w.dim() == 1 and w.numel() == width
        if leaf and vector and not isinstance(m, nn.Linear):
            out[name] = m
    return out


def trace(model: nn.Module, ids: Tensor, width: int) -> Structure:
    """Which norm feeds which linear, and which linear feeds which norm, from one forward."""
    norms = _norms(model, width)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    seen: dict[str, tuple[int, int]] = {}  # module -> (input ptr, output ptr) of its first call
    alive: list[Tensor] = []  # holding every traced tensor keeps its memory from being reused by another

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            alive.extend((args[0], out))
            seen.setdefault(name, (args[0].data_ptr(), out.data_ptr()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in {**norms, **linears}.items()]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out_of = {seen[n][1]: n for n in norms if n in seen}
    in_of = {seen[n][0]: n for n in norms if n in seen}
    s = Structure()
    for name, lin in linears.items():
        if name not in seen:
            continue
        src = out_of.get(seen[name][0])
        if src is not None:
            s.readers.setdefault(src, []).append(name)
        elif lin.out_features == width:  # not a reader, so it writes the stream (anything else: the final check)
            dst = in_of.get(seen[name][1])
            (s.writer_norms.append(dst) if dst is not None else s.writers.append(name))
    stray = set(norms) - set(s.readers) - set(s.writer_norms)
    if stray:
        raise RotationError(f"norms {sorted(stray)} neither feed a linear nor follow one: cannot rotate exactly")
    return s


def _identity_and_gain(norm: nn.Module, width: int) -> tuple[float, Tensor]:
    """The gain value that makes ``norm`` a pure RMS normalisation (1 for ``x * w``, 0 for ``x * (1 + w)``)
    and the gain it applies now; raises if the module is not an RMS norm (a rotation would not commute)."""
    saved = norm.weight.detach().clone()
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
    identity = 1.0 if float(_pure(norm, x, 0.0, saved).abs().max()) == 0.0 else 0.0
    pure = _pure(norm, x, identity, saved)
    rms = x * x.pow(2).mean(-1, keepdim=True).add(1e-5).rsqrt()
    if not torch.allclose(pure, rms, rtol=1e-3, atol=1e-3):
        name = type(norm).__name__
        raise RotationError(f"{name} is not an RMS norm: an orthogonal rotation does not commute with it")
    ones = torch.ones(1, width)
    with torch.no_grad():
        gain = norm(ones)[0].double() / _pure(norm, ones, identity, saved)[0].double()
    return identity, gain


def _pure(norm: nn.Module, x: Tensor, identity: float, saved: Tensor) -> Tensor:
    with torch.no_grad():
        norm.weight.fill_(identity)
        y = norm(x)
        norm.weight.copy_(saved)
    return y


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def fuse_norms(model: nn.Module, s: Structure, width: int) -> None:
    """Move each reader norm's gain into the linears it feeds and leave the norm a pure normalisation."""
    for norm_name, linear_names in s.readers.items():
        norm = model.get_submodule(norm_name)
        identity, gain = _identity_and_gain(norm, width)
        for name in linear_names:
            lin = model.get_submodule(name)
            lin.weight.copy_((lin.weight.double() * gain[None, :]).to(lin.weight.dtype))
        norm.weight.fill_(identity)


@torch.no_grad()
def untie(model: nn.Module) -> None:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone())
    for config in {id(c): c for c in (model.config, model.config.get_text_config(decoder=True))}.values():
        config.tie_word_embeddings = False


PLACEMENTS = ("auto", "stream", "inputs")
SILENT = 0.01  # a gain below this fraction of its norm's mean |gain| silences that channel


def silenced_channels(model: nn.Module, s: Structure, width: int) -> dict[str, list[int]]:
    """Per reader norm inside the decoder, the channels its gain (nearly) zeroes."""
    inside = {id(m) for layer in decoder_layers(model) for m in layer.modules()}
    out = {}
    for name in s.readers:
        norm = model.get_submodule(name)
        if id(norm) in inside:
            gain = _identity_and_gain(norm, width)[1].abs()
            quiet = torch.nonzero(gain < SILENT * gain.mean()).flatten().tolist()
            if quiet:
                out[name] = quiet
    return out


def resolve_placement(model: nn.Module, placement: str, s: Structure, width: int) -> str:
    if placement not in PLACEMENTS:
        raise RotationError(f"unknown rotation placement {placement!r}: use {', '.join(PLACEMENTS)}")
    if placement == "auto":
        return "inputs" if s.writer_norms or silenced_channels(model, s, width) else "stream"
    return placement


@torch.no_grad()
def _rotate_stream(model: nn.Module, s: Structure, q: Tensor, width: int) -> None:
    untie(model)
    fuse_norms(model, s, width)
    emb = model.get_input_embeddings()
    emb.weight.copy_((emb.weight.double() @ q).to(emb.weight.dtype))
    for name in (n for names in s.readers.values() for n in names):
        lin = model.get_submodule(name)
        lin.weight.copy_((lin.weight.double() @ q).to(lin.weight.dtype))
    for name in s.writers:
        lin = model.get_submodule(name)
        lin.weight.copy_((q.T @ lin.weight.double()).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_((lin.bias.double() @ q).to(lin.bias.dtype))
    for name in s.writer_norms:
        _set(model, name, RotatedOutput(model.get_submodule(name), q))


@torch.no_grad()
def _rotate_inputs(model: nn.Module, s: Structure, q: Tensor) -> None:
    inside = {id(m) for layer in decoder_layers(model) for m in layer.modules()}
    # the final norm feeds only the head, which is never quantized: rotating it would buy nothing
    for norm_name, linear_names in s.readers.items():
        if id(model.get_submodule(norm_name)) not in inside:
            continue
        for name in linear_names:
            lin = model.get_submodule(name)
            lin.weight.copy_((lin.weight.double() @ q).to(lin.weight.dtype))
        _set(model, norm_name, RotatedOutput(model.get_submodule(norm_name), q))


@torch.no_grad()
def rotate(
    model: nn.Module,
    q: Tensor | None = None,
    kind: str = "auto",
    seed: int = 0,
    probe: Tensor | None = None,
    placement: str = "auto",
) -> Tensor:
    """Rotate in place (``placement``: auto, stream or inputs; see the module); returns ``Q`` (float64).
    The function the model computes is unchanged up to float rounding, which is checked on ``probe``."""
    width = model.config.get_text_config(decoder=True).hidden_size
    vocab = model.get_input_embeddings().weight.shape[0]
    probe = probe if probe is not None else torch.randint(0, vocab, (1, 24), generator=torch.Generator().manual_seed(1))
    probe = probe.to(next(model.parameters()).device)
    before = model(input_ids=probe, use_cache=False).logits
    s = trace(model, probe, width)
    where = resolve_placement(model, placement, s, width)
    q = rotation_matrix(width, kind, seed) if q is None else q.double()
    if where == "stream":
        _rotate_stream(model, s, q, width)
    else:
        _rotate_inputs(model, s, q)
    after = model(input_ids=probe, use_cache=False).logits
    err = float((after - before).abs().max() / before.abs().max().clamp(min=1e-6))
    if not err < 1e-3:
        raise RotationError(
            f"the rotated model differs from the original (relative logit error {err:.2e}): not exactly rotatable"
        )
    return q


def placement_of(model: nn.Module, placement: str = "auto") -> str:
    """What ``rotate(model, placement=...)`` does on this model: ``stream`` or ``inputs`` (one short forward)."""
    width = model.config.get_text_config(decoder=True).hidden_size
    ids = torch.zeros(1, 4, dtype=torch.long, device=next(model.parameters()).device)
    return resolve_placement(model, placement, trace(model, ids, width), width)
