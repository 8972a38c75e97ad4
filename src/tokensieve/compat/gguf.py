"""GGUF tensor layout: the GGUF writer inverts what transformers' GGUF loader does to each tensor."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class GgufTensor:
    """Where a parameter lives in a GGUF file: the loader reads ``hf = gguf[rows] + offset``."""

    name: str
    rows: Any  # numpy int array, or None for the identity
    offset: float


def gguf_layout(model: torch.nn.Module, arch: str) -> dict[str, GgufTensor]:
    """For each state-dict name that GGUF architecture ``arch``'s naming covers (gguf-py's tensor map): its GGUF
    tensor name and the row order and constant offset transformers' loader applies (probed on small stand-ins:
    Llama's q/k head permutation, Gemma's ``1 + w`` norms), so the writer needs no per-model branch. Relies on
    ``modeling_gguf_pytorch_utils``: ``TENSOR_PROCESSORS`` and ``TensorProcessor.process`` reading the config's
    ``num_attention_heads`` / ``num_key_value_heads``."""
    import gguf
    import numpy as np
    from transformers import modeling_gguf_pytorch_utils as g

    from tokensieve.errors import UnsupportedArchitectureError

    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise UnsupportedArchitectureError(f"GGUF architecture {arch!r} is unknown to gguf-py: cannot export")
    config = model.config.to_dict()
    processor = g.TENSOR_PROCESSORS.get(arch, g.TensorProcessor)(config=config)
    parsed = {"config": config}
    names = gguf.get_tensor_name_map(archs[arch], model.config.num_hidden_layers)
    to_hf = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is not None:
            to_hf[f"{gguf_name}.{suffix}"] = hf_name
    state = model.state_dict()
    rng = np.random.default_rng(0)
    out: dict[str, GgufTensor] = {}
    for gguf_name, hf_name in to_hf.items():
        if hf_name not in state:
            continue
        shape = (state[hf_name].shape[0],) + ((2,) if state[hf_name].dim() > 1 else ())

        def run(x: Any, gguf_name: str = gguf_name) -> Any:
            r = processor.process(weights=x, name=gguf_name, tensor_key_mapping=to_hf, parsed_parameters=parsed)
            if r.name != gguf_name or r.weights.shape != x.shape:
                raise UnsupportedArchitectureError(f"transformers' GGUF loader reshapes {gguf_name}: not exportable")
            return np.asarray(r.weights, dtype=np.float64)

        offset = run(np.zeros(shape, np.float32))
        index = np.broadcast_to(np.arange(shape[0], dtype=np.float32).reshape(-1, *([1] * (len(shape) - 1))), shape)
        rows = np.rint(run(np.ascontiguousarray(index)) - offset).astype(np.int64).reshape(shape[0], -1)[:, 0]
        probe = rng.standard_normal(shape).astype(np.float32)
        if (
            np.ptp(offset) != 0
            or not np.array_equal(np.sort(rows), np.arange(shape[0]))
            or not np.allclose(run(probe), probe[rows] + offset.flat[0], atol=1e-6)
        ):
            raise UnsupportedArchitectureError(
                f"transformers' GGUF loader transforms {gguf_name} beyond a row order and an offset: not exportable"
            )
        identity = np.array_equal(rows, np.arange(shape[0]))
        out[hf_name] = GgufTensor(gguf_name, None if identity else rows, float(offset.flat[0]))
    return out
