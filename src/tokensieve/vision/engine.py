"""``Sieve``: a context manager that prunes or merges patch tokens inside a real transformers ViT.

On enter it switches the model to a registered attention function (SDPA underneath) and installs forward
pre-hooks: one on the model (reads the image size, resets the per-pass state, lets ``downsample`` resize
the input) and one per encoder layer (where token counts change, at layer boundaries). The attention
function records what methods need (head-mean keys, CLS attention, q/k) and adds ToMe's ``log(size)``
bias once tokens are merged. Everything is removed on exit. With nothing reduced the attention call is
transformers' own SDPA with the same arguments, so outputs are bit-identical to the plain model.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor, nn

from tokensieve import compat
from tokensieve.errors import NoClsTokenError, NotEngagedError
from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.model import VisionModel
from tokensieve.vision.tokens import Tokens, unmerge

_active = threading.local()


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any):
    st: Tokens | None = getattr(_active, "state", None)
    method: VisionMethod | None = getattr(_active, "method", None)
    if st is None or method is None:
        return compat.sdpa_attention(module, query, key, value, mask, **kw)
    st.calls += 1
    bias = st.bias()
    st.keys = key.mean(1)
    need = method.observe
    if "qk" in need:
        st.qk = (query, key)
    if "cls" in need and st.n_special:
        scale = float(kw.get("scaling") or query.shape[-1] ** -0.5)
        logits = (query[:, :, :1] @ key.transpose(-1, -2)) * scale  # [B, H, 1, T]: one query row only
        if bias is not None:
            logits = logits + bias
        st.cls_attn[st.layer] = logits.softmax(-1)[:, :, 0]
    st.scale = float(kw.get("scaling") or query.shape[-1] ** -0.5)
    if bias is not None:
        bias = bias.to(query.dtype)
        mask = bias if mask is None else mask + bias
    return compat.sdpa_attention(module, query, key, value, mask, **kw)


class Sieve:
    """``with Sieve(vm, method) as s: out = vm.backbone(pixel_values=x)``; then ``s.state`` / ``s.unmerge``."""

    def __init__(self, vm: VisionModel, method: VisionMethod) -> None:
        self.vm, self.method = vm, method
        self.layers = compat.vision_layers(vm.backbone)
        self.state: Tokens | None = None
        self._handles: list[Any] = []
        self._attn: list[tuple[Any, str]] = []
        self._pixels: tuple[int, int] = (vm.image_size, vm.image_size)
        if method.needs_cls and not vm.has_cls:
            raise NoClsTokenError(
                f"method {method.id!r} ranks patches by [CLS] attention, but {vm.name} has no CLS token "
                "(SigLIP pools without one): use a CLS-free method such as tome, divprune or fourier"
            )

    def __enter__(self) -> Sieve:
        compat.register_vision_attention(_attention)
        self._attn = compat.set_attention(self.vm.backbone, compat.VISION_ATTENTION)
        bb = self.vm.backbone
        self._handles.append(bb.register_forward_pre_hook(self._start, with_kwargs=True))
        self._handles.append(bb.register_forward_hook(self._finish, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        compat.restore_attention(self._attn)
        _active.state = _active.method = None

    # ---- hooks
    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        pixels = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        self._pixels = tuple(pixels.shape[-2:])
        resized = self.method.resize(pixels, self.vm.patch_size)
        if resized is not pixels:
            if "pixel_values" in kwargs:
                kwargs["pixel_values"] = resized
            else:
                args = (resized, *args[1:])
            if compat.takes_interpolate_pos_encoding(module):
                kwargs["interpolate_pos_encoding"] = True
        self.state = None
        _active.method = self.method
        return args, kwargs

    def _finish(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        st = self.state
        _active.state = _active.method = None
        if st is None or st.calls < len(self.layers):
            seen = 0 if st is None else st.calls
            raise NotEngagedError(
                f"{type(module).__name__} ran {seen} of {len(self.layers)} attention calls through tokensieve's "
                "attention: the model does not route attention through transformers' interface; use a "
                "ViT / DeiT / DINOv2 / CLIP-vision / SigLIP model"
            )

    def _layer_hook(self, i: int):
        def hook(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                self.state = self._new_state(x)
                _active.state = self.state
            st = self.state
            st.layer = i
            if "ttv" in self.method.observe:
                self.method.track(x, st)
            target = self.method.target(i, len(self.layers), st, x.shape[1] - st.n_special)
            if target is not None:
                x = self.method.reduce(x, st, target)
            if args:
                args = (x, *args[1:])
            else:
                kwargs["hidden_states"] = x
            return args, kwargs

        return hook

    def _new_state(self, x: Tensor) -> Tokens:
        p = self.vm.patch_size
        grid = (self._pixels[0] // p, self._pixels[1] // p)
        n0 = grid[0] * grid[1]
        ns = x.shape[1] - self.method.run_patches(grid, p)
        b, dev = x.shape[0], x.device
        assign = torch.arange(ns + n0, device=dev).expand(b, -1).clone()
        st = Tokens(ns, grid, assign, torch.zeros(b, ns + n0, dtype=torch.bool, device=dev))
        self.method.start(st)
        return st

    def unmerge(self, hidden: Tensor) -> Tensor:
        if self.state is None:
            raise NotEngagedError("no forward pass ran inside this Sieve: call the model first")
        return unmerge(hidden, self.state)
