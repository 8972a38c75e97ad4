"""``--format``: what a quantized model is written as, and the recipe each format needs.

``fake`` (research mode): codes one per byte and fp32 grids in ``quantized.safetensors``, loaded back as
float32 weights on the grid (``quantize.io``); it measures quality, not size or speed. ``gguf:<TYPE>``: a
llama.cpp file with the codes packed (``gguf``). ``compressed-tensors``: a transformers / vLLM checkpoint
with int4 / int3 groups packed into int32 (``compressed``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from torch import nn

from tokensieve.errors import ModelNotFoundError, ParameterError, UnsupportedArchitectureError
from tokensieve.quantize.export.grids import GRIDS

COMPRESSED_BITS = (3, 4)
R = TypeVar("R")  # quantize.run.Recipe (run imports this package, so not named here)


@dataclass(frozen=True)
class Format:
    kind: str  # fake | gguf | compressed-tensors
    type: str = ""  # the GGUF type

    @property
    def label(self) -> str:
        return f"gguf:{self.type}" if self.kind == "gguf" else self.kind


def parse_format(text: str) -> Format:
    kind, _, type_name = text.partition(":")
    if kind == "gguf":
        if type_name not in GRIDS:
            raise ParameterError(f"--format gguf:{type_name} is not supported: use gguf:{' | gguf:'.join(GRIDS)}")
        return Format("gguf", type_name)
    if text in ("fake", "compressed-tensors"):
        return Format(text)
    raise ParameterError(f"--format {text!r} is unknown: use fake, compressed-tensors or gguf:<TYPE>")


def recipe_for(fmt: Format, recipe: R, bits: int | None, group: int | None) -> R:
    """The recipe with the format's bits and group filled in; a given --bits/--group the format cannot store
    is an error, never silently changed."""
    if fmt.kind == "gguf":
        grid = GRIDS[fmt.type]
        if bits is not None and bits != grid.bits:
            raise ParameterError(f"--bits {bits} does not fit gguf:{fmt.type}: it stores {grid.bits}-bit codes")
        if group is not None and group != grid.group:
            raise ParameterError(f"--group {group} does not fit gguf:{fmt.type}: its blocks are {grid.group} columns")
        if recipe.clip:  # type: ignore[attr-defined]
            raise ParameterError("--clip searches a min-max range: gguf types set their own scales")
        return replace(recipe, bits=grid.bits, group=grid.group, grid=fmt.type)  # type: ignore[type-var]
    bits = 4 if bits is None else bits
    group = 0 if group is None else group
    if fmt.kind == "compressed-tensors":
        if bits not in COMPRESSED_BITS:
            raise ParameterError(f"--bits {bits} does not fit compressed-tensors here: use 3 or 4")
        if group <= 0:
            raise ParameterError("compressed-tensors export writes groups: pass --group (e.g. 32, 64 or 128)")
    return replace(recipe, bits=bits, group=group)  # type: ignore[type-var]


def gguf_source(model: str, given: str | None) -> Path:
    """The GGUF whose metadata (architecture, tokenizer) the export copies."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise ModelNotFoundError(f"--source-gguf {given} does not exist")
        return path
    from tokensieve.runtime.models import BUNDLED

    if model in BUNDLED:
        return BUNDLED[model].gguf_path()
    raise UnsupportedArchitectureError(
        f"--format gguf needs the architecture metadata of a GGUF of {model!r}: pass --source-gguf FILE "
        "(llama.cpp's convert_hf_to_gguf.py writes one from the model directory)"
    )


def check_exportable(model: nn.Module, placement: str = "") -> None:
    """Raise when the model cannot be written as a standard graph (GGUF or a transformers checkpoint)."""
    if placement == "inputs":
        raise ParameterError(
            "--placement inputs cannot export: it rotates each norm's output at run time (norm(x) Q), which neither "
            "llama.cpp nor a transformers checkpoint can express, and a per-channel norm gain cannot absorb a dense "
            "rotation; use --placement stream or --no-rotate"
        )
    rotated = [n for n, _ in model.named_buffers() if n.endswith("rotation")]
    if rotated:
        raise ParameterError(
            f"cannot export: {rotated[0]} rotates a norm's output at run time (a post-norm under the "
            "stream placement), which no engine's graph runs and no weight can absorb; use --no-rotate"
        )
