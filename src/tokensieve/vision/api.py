"""Python API: ``features(vm, pixels, "tome", keep=0.5)`` -> pruned features (and a dense saliency map)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tokensieve.errors import ImageError
from tokensieve.vision.engine import Sieve
from tokensieve.vision.methods import get_vision_method
from tokensieve.vision.model import VisionModel
from tokensieve.vision.tokens import Tokens


@dataclass
class Features:
    cls: Tensor  # [B, D] the image feature: CLS output (size-weighted token mean without a CLS token)
    tokens: Tensor  # [B, T', D] the normed last hidden state, as pruned
    dense: Tensor  # [B, N0, D] patch outputs unmerged back onto the full grid
    state: Tokens | None
    saliency: Tensor | None  # [B, 1, H, W] when the model has the saliency head
    seconds: float

    @property
    def tokens_kept(self) -> int:
        return self.tokens.shape[1]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 array [H, W, 3] from an image file, or an ImageError naming the fix."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ImageError(f"image {str(path)!r} does not exist: pass a readable image file (png, jpg, ...)")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"image {str(path)!r} cannot be read ({e}): pass a png/jpg/bmp/tiff file") from None


def preprocess(vm: VisionModel, image: np.ndarray, size: int | None = None) -> Tensor:
    """Resize the shorter side, centre-crop a square, normalise: [1, 3, S, S]."""
    size = size or vm.image_size
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    x = torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x - torch.tensor(vm.mean)[:, None, None]) / torch.tensor(vm.std)[:, None, None]


def _pool(vm: VisionModel, out: Any, st: Tokens | None) -> Tensor:
    hidden = out.last_hidden_state
    if vm.has_cls:
        return hidden[:, 0]
    sizes = st.sizes if st is not None and st.sizes is not None else torch.ones(hidden.shape[:2])
    return (hidden * sizes[..., None]).sum(1) / sizes.sum(1, keepdim=True)


@torch.no_grad()
def features(
    vm: VisionModel,
    pixels: Tensor,
    method: str | None = None,
    keep: float = 1.0,
    dense_head: bool = True,
    **params: Any,
) -> Features:
    """Run the model with ``method`` pruning/merging inside it (None: the plain model); ``dense_head``: also
    run the saliency head on the unmerged patches (when the model has one)."""
    start = time.perf_counter()
    st = None
    if method is None:
        out = vm.backbone(pixel_values=pixels)
        dense = out.last_hidden_state
    else:
        with Sieve(vm, get_vision_method(method, keep=keep, **params)) as s:
            out = vm.backbone(pixel_values=pixels)
            dense = s.unmerge(out.last_hidden_state)
            st = s.state
    seconds = time.perf_counter() - start
    sal = None
    if vm.saliency is not None and dense_head:
        ns = st.n_special if st is not None else dense.shape[1] - (pixels.shape[-2] // vm.patch_size) ** 2
        grid = (pixels.shape[-2] // vm.patch_size, pixels.shape[-1] // vm.patch_size)
        sal = vm.saliency(dense[:, ns:], grid, tuple(pixels.shape[-2:]))
    return Features(_pool(vm, out, st), out.last_hidden_state, dense, st, sal, seconds)


def sdpa_flops(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of one SDPA call from its shapes: QK^T and AV, two FLOPs per multiply-add (query heads may be a
    multiple of the key heads; a mask or the softmax is not counted, as torch counts none for its kernels)."""
    b, hq, sq, d = q_shape
    sk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * hq * sq * sk * (d + dv)


def _cpu_sdpa_ops() -> dict[Any, Any]:
    # torch's flop counter knows SDPA's CUDA kernels but not the CPU one (`_scaled_dot_product_flash_attention_
    # for_cpu`), so on a CPU it counts attention as 0 FLOPs; give it the same formula there
    ops = torch.ops.aten
    return {getattr(ops, n): sdpa_flops for n in ("_scaled_dot_product_flash_attention_for_cpu",) if hasattr(ops, n)}


def measure_flops(vm: VisionModel, pixels: Tensor, method: str | None = None, keep: float = 1.0, **params: Any) -> int:
    """FLOPs of one backbone forward pass (no saliency head: it is not pruned) as torch's flop counter
    measures them: matmuls, convolutions, attention (QK^T and AV, on CPU too), and the methods' own scoring
    work. Softmax, norms and element-wise ops are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_ops())
    with counter:
        features(vm, pixels, method, keep, dense_head=False, **params)
    return int(counter.get_total_flops())


def top_iou(a: torch.Tensor, b: torch.Tensor, frac: float = 0.2) -> torch.Tensor:
    """IoU of the top-``frac`` pixels of two maps [N, 1, H, W] -> [N]."""
    a, b = a.flatten(1), b.flatten(1)
    k = int(frac * a.shape[1])
    ma = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, 1).indices, True)
    mb = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, 1).indices, True)
    return (ma & mb).sum(1) / (ma | mb).sum(1)
