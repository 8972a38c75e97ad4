"""Write a quantized model as a compressed-tensors ``pack-quantized`` checkpoint (transformers loads it; vLLM
runs it packed).

Per quantized linear: ``weight_packed`` (the codes as signed ints ``codes - 2^(b-1)``, 32 values in exactly
``b`` int32 words: compressed-tensors' own ``pack_to_int32``, dense since 0.17), ``weight_scale`` (fp32, one
per output row and group), ``weight_zero_point`` (``zero - 2^(b-1)``, packed along the rows), ``weight_shape``.
compressed-tensors dequantizes ``(q - z) * scale``, the same single rounding as ``Quantized.dequantize``, so
the loaded weights equal tokensieve's. Everything else (embeddings, norms, head) stays in the model's dtype.
``config.json`` carries the ``quantization_config`` loaders read (asymmetric int groups, ``ignore``: what
was not quantized).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tokensieve.errors import ParameterError
from tokensieve.quantize.engine import QuantResult
from tokensieve.quantize.export.formats import COMPRESSED_BITS, check_exportable


@dataclass
class Written:
    path: Path
    bytes: int
    weights: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.weights


def _zero_points(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The packed zero points, zero-padded to the unpacked shape ``[rows, groups]``: compressed-tensors 0.20.1
    builds the model's (meta) zero-point parameter at that shape and transformers refuses any other; its
    unpacking reads the leading ``ceil(rows * b / 32)`` words and ignores the padding."""
    out = torch.zeros(shape, dtype=torch.int32)
    out[: packed.shape[0]] = packed
    return out.contiguous()


def write_compressed(model: nn.Module, tokenizer: object, result: QuantResult, out: str | Path) -> Written:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import save_file

    spec = result.spec
    if spec.grid is not None or spec.bits not in COMPRESSED_BITS or spec.group <= 0:
        raise ParameterError("compressed-tensors export takes min-max int3/int4 groups: --bits 3|4 --group N")
    check_exportable(model, result.placement)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    offset = 1 << (spec.bits - 1)
    state = {k: v for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    for name, q in result.layers.items():
        state.pop(f"{name}.weight")
        codes = (q.codes.to(torch.int16) - offset).to(torch.int8)
        zero = (q.zero.to(torch.int16) - offset).to(torch.int8)
        tensors[f"{name}.weight_packed"] = pack_to_int32(codes, spec.bits).contiguous()
        tensors[f"{name}.weight_scale"] = q.scale.float().contiguous()
        tensors[f"{name}.weight_zero_point"] = _zero_points(pack_to_int32(zero, spec.bits, packed_dim=0), zero.shape)
        tensors[f"{name}.weight_shape"] = torch.tensor(q.codes.shape, dtype=torch.int64)
    seen: set[int] = set()
    for name, t in state.items():  # tied weights once, under the name the model loads first
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            tensors[name] = t.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": spec.bits,
                    "type": "int",
                    "symmetric": False,
                    "strategy": "group",
                    "group_size": spec.group,
                    "dynamic": False,
                    "observer": "minmax",
                },
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "ignore": sorted({n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - set(result.layers)),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    plain = sum(t.numel() for n, t in tensors.items() if not n.rsplit(".", 1)[-1].startswith("weight_"))
    weights = plain + sum(q.codes.numel() for q in result.layers.values())
    size = (out / "model.safetensors").stat().st_size
    return Written(out / "model.safetensors", size, weights)
