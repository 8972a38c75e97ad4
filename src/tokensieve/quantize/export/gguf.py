"""Write a quantized model as a GGUF file that llama.cpp loads.

- Metadata (architecture hyper-parameters, tokenizer, chat template) is copied field by field from the
  model's source GGUF, never written per model type; ``general.file_type`` is set to the new type.
- Tensor names and each tensor's layout come from ``compat.gguf_layout`` (the inverse of transformers'
  GGUF loader: Llama's q/k row order, Gemma's ``1 + w`` norms).
- Decoder linears: tokensieve's codes, packed on their own grid (``blocks``, ``kquants``): nothing is
  re-rounded, so gguf-py's dequantization of the file equals ``Quantized.dequantize`` bit for bit.
- Everything else as llama.cpp's own quantizer does: vectors in F32; the token embedding (tied: also the
  output head) in Q8_0, an untied output head in Q8_0 and the embedding at the main type, both by
  round to nearest on the same grids. ``F32`` / ``F16`` export the unquantized model.
- A model that rotates a norm's output at run time (the ``inputs`` placement, or Gemma's post-norms under
  ``stream``) is refused: llama.cpp's graph has no op for ``norm(x) Q``, and a norm's per-channel gain cannot
  absorb a dense rotation, so no exact fold exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tokensieve.compat import gguf_layout
from tokensieve.errors import ModelNotFoundError, ParameterError, UnsupportedArchitectureError
from tokensieve.quantize.engine import QuantResult
from tokensieve.quantize.export.blocks import pack_block32
from tokensieve.quantize.export.formats import check_exportable
from tokensieve.quantize.export.grids import GRIDS, grid_of
from tokensieve.quantize.export.kquants import pack_q3_k, pack_q4_k
from tokensieve.quantize.gptq import Quantized, QuantSpec, rtn

PLAIN = ("F32", "F16")
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q3_K": 11, "Q4_K": 14}


@dataclass
class Written:
    path: Path
    bytes: int
    weights: int  # parameters written (tied ones once)
    types: dict[str, int]  # GGUF type -> tensor count

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.weights


def pack(q: Quantized) -> np.ndarray:
    return {"Q3_K": pack_q3_k, "Q4_K": pack_q4_k}.get(q.type, pack_block32)(q)


def write_gguf(
    model: nn.Module, source: str | Path, out: str | Path, type_name: str, result: QuantResult | None = None
) -> Written:
    """Write ``model`` (quantized in place by ``result`` with ``type_name``'s grid, or plain F32/F16) to ``out``."""
    import gguf

    source = Path(source)
    if not source.is_file():
        raise ModelNotFoundError(f"source GGUF {source} does not exist: the metadata is copied from it")
    if type_name not in PLAIN and type_name not in GRIDS:
        raise ParameterError(f"GGUF type {type_name!r} is not supported: use one of {', '.join((*PLAIN, *GRIDS))}")
    if type_name not in PLAIN and result is None:
        raise ParameterError(f"{type_name} needs the quantization result (codes) to write")
    check_exportable(model, result.placement if result else "")
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    layout = gguf_layout(model, arch)
    state = model.state_dict()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    unmapped = [n for n in state if n not in layout and not (tied and state[n].data_ptr() == embed.data_ptr())]
    if unmapped:
        raise UnsupportedArchitectureError(f"{unmapped[0]} has no GGUF tensor name for {arch}: cannot export")
    quantized = {f"{n}.weight": q for n, q in (result.layers if result else {}).items()}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.file_type", "general.architecture"):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), main, sub_type=sub)
    writer.add_file_type(FILE_TYPES[type_name])
    types: dict[str, int] = {}
    weights, seen = 0, set()
    for name, t in state.items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        where = layout[name]
        data, kind = _tensor(t, quantized.get(name), type_name, where.offset, is_head=_is_head(t, embed, head, tied))
        if where.rows is not None:  # the loader reads hf = gguf[rows]: put each row back where it came from
            placed = np.empty_like(data)
            placed[where.rows] = data
            data = placed
        if kind in ("F32", "F16"):
            writer.add_tensor(where.name, data)
        else:
            writer.add_tensor(where.name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[kind])
        types[kind] = types.get(kind, 0) + 1
        weights += t.numel()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Written(out, out.stat().st_size, weights, types)


def _is_head(t: torch.Tensor, embed: torch.Tensor, head: nn.Module | None, tied: bool) -> str:
    """'embed' / 'head' / '' : the token embedding and output head get llama.cpp's types, not the linears'."""
    if t.data_ptr() == embed.data_ptr():
        return "head" if tied else "embed"
    return "head" if head is not None and t.data_ptr() == head.weight.data_ptr() else ""


def _tensor(t: torch.Tensor, q: Quantized | None, type_name: str, offset: float, is_head: str) -> tuple:
    """(numpy data, GGUF type) of one state-dict tensor."""
    w = t.detach().float()
    if q is not None:
        if offset:
            raise UnsupportedArchitectureError("a quantized linear with an offset in GGUF: cannot export")
        return pack(q), q.type
    if w.dim() < 2 or type_name in PLAIN:
        kind = "F16" if type_name == "F16" and w.dim() >= 2 else "F32"
        return (w - offset).numpy().astype(np.float16 if kind == "F16" else np.float32), kind
    if offset:
        raise UnsupportedArchitectureError("a matrix with an offset in GGUF: cannot export")
    # llama.cpp: the output head at Q8_0 when its width is no multiple of 256; an untied embedding at the main type
    grid = GRIDS["Q8_0"] if is_head == "head" or not is_head else grid_of(type_name).for_columns(w.shape[1])
    q = rtn(w, QuantSpec(grid=grid))
    return pack(q), q.type
