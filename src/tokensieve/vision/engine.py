"""``Sieve``: a context manager that prunes or merges patch tokens inside a real transformers ViT.

On enter it switches the model to tokensieve's registered attention (``core.observe.hooks``: SDPA underneath; this
sieve is its ``vision`` observer while a forward runs) and installs forward
pre-hooks: one on the model (reads the image size, resets the per-pass state, lets ``downsample`` resize
the input) and one per encoder layer (where one-shot pruners change token counts, at layer boundaries).
A merging method (``stage == "mlp"``: ToMe, PiToMe) also gets three hooks per block, so it merges between
attention and MLP as the paper does without touching the block's code: a pre-hook on the MLP's norm merges
the residual stream ``h`` (the MLP then runs on fewer tokens), a hook on the MLP copies its output back to
every member token, and a hook on the block merges ``h + mlp`` with the same plan. Since a merged slot's
members all get the same MLP output, that last merge equals ``merge(h) + mlp(norm(merge(h)))`` exactly in
real arithmetic, at the cost of a gather and a weighted sum, no matmul. (Blocks whose MLP output adds the
residual itself, ViT / DeiT up to transformers 5.4, get the merged ``h`` handed to it instead.) The
attention function records what methods need (head-mean keys, CLS attention, q/k) and adds ToMe's
``log(size)`` bias once tokens are merged. Everything is removed on exit. With nothing reduced the attention
call is transformers' own SDPA with the same arguments and no hook changes a tensor, so outputs are
bit-identical to the plain model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.errors import NoClsTokenError, NotEngagedError
from tokensieve.vision.methods.base import VisionMethod
from tokensieve.vision.model import VisionModel
from tokensieve.vision.tokens import MergePlan, Tokens, commit, unmerge


def _attention(
    st: Tokens | None,
    method: VisionMethod,
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    **kw: Any,
):
    """The ``vision`` observer: what ``method`` needs recorded into ``st``, ToMe's size bias on the mask."""
    if st is None:
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
        self._plan: MergePlan | None = None  # the merge of the block running now (stage "mlp")
        if method.needs_cls and not vm.has_cls:
            raise NoClsTokenError(
                f"method {method.id!r} ranks patches by [CLS] attention, but {vm.name} has no CLS token "
                "(SigLIP pools without one): use a CLS-free method such as tome, divprune or fourier"
            )
        self._branches = [compat.vision_mlp_branch(layer) for layer in self.layers] if method.stage == "mlp" else []
        if any(b is None for b in self._branches):
            raise NotEngagedError(
                f"{method.id} merges between attention and MLP, but {type(self.layers[0]).__name__} has no "
                "recognised MLP norm: use a ViT / DeiT / DINOv2 / CLIP-vision / SigLIP model"
            )

    def __enter__(self) -> Sieve:
        hooks.register()
        self._attn = compat.set_attention(self.vm.backbone, hooks.ATTENTION)
        bb = self.vm.backbone
        self._handles.append(bb.register_forward_pre_hook(self._start, with_kwargs=True))
        self._handles.append(bb.register_forward_hook(self._finish, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        for i, branch in enumerate(self._branches):
            self._handles.append(branch.norm.register_forward_pre_hook(self._mlp_norm_hook(i)))
            if branch.residual_inside:  # output(y, h) adds h itself: hand it the merged h instead
                self._handles.append(branch.mlp.register_forward_pre_hook(self._residual_hook, with_kwargs=True))
            else:
                self._handles.append(branch.mlp.register_forward_hook(self._mlp_hook))
                self._handles.append(self.layers[i].register_forward_hook(self._block_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        compat.restore_attention(self._attn)
        hooks.observe("vision", None)

    def _attend(self, module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any):
        return _attention(self.state, self.method, module, query, key, value, mask, **kw)

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
        self.state = None  # plain SDPA until layer 0's hook sets the state the attention records into
        hooks.observe("vision", self._attend)
        return args, kwargs

    def _finish(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        st = self.state
        hooks.observe("vision", None)
        if st is None or st.calls < len(self.layers):
            seen = 0 if st is None else st.calls
            raise NotEngagedError(
                f"{type(module).__name__} ran {seen} of {len(self.layers)} attention calls through tokensieve's "
                "attention: the model does not route attention through transformers' interface; use a "
                "ViT / DeiT / DINOv2 / CLIP-vision / SigLIP model"
            )
        if self._branches and st.mlp_calls < len(self.layers):
            raise NotEngagedError(
                f"{type(module).__name__} ran {st.mlp_calls} of {len(self.layers)} MLP norms through tokensieve's "
                "hooks: its blocks do not feed the MLP through the norm found; use a ViT / DeiT / DINOv2 / "
                "CLIP-vision / SigLIP model"
            )

    def _layer_hook(self, i: int):
        def hook(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                self.state = self._new_state(x)
            st = self.state
            st.layer = i
            if "ttv" in self.method.observe:
                self.method.track(x, st)
            if self.method.stage == "layer":
                target = self.method.target(i, len(self.layers), st, x.shape[1] - st.n_special)
                if target is not None:
                    x = self.method.reduce(x, st, target)
            if args:
                args = (x, *args[1:])
            else:
                kwargs["hidden_states"] = x
            return args, kwargs

        return hook

    def _mlp_norm_hook(self, i: int):
        def hook(norm: nn.Module, args: tuple) -> tuple | None:
            st, h = self.state, args[0]
            st.mlp_calls += 1
            self._plan = None
            target = self.method.target(i, len(self.layers), st, h.shape[1] - st.n_special)
            if target is None:
                return None  # nothing merged in this block: the block runs untouched (bit-exact)
            self._plan = self.method.plan(h, st, target)
            commit(st, self._plan)
            return (self._plan.apply(h), *args[1:])

        return hook

    def _mlp_hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        # the MLP ran on the merged tokens; the residual it is added to still has every token
        return None if self._plan is None else self._plan.spread(output)

    def _residual_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan, self._plan = self._plan, None
        if plan is None:
            return None
        return compat.with_residual(args, kwargs, plan.apply(compat.call_residual(args, kwargs)))

    def _block_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        plan, self._plan = self._plan, None
        if plan is None:
            return None
        return compat.replace_layer_output(output, plan.apply(compat.layer_output_hidden(output)))

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
