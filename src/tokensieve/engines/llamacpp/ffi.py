"""The one place that touches llama-cpp-python's ctypes bindings and libggml's tensor struct.

llama-cpp-python is an optional extra (``pip install -e ".[llamacpp]"``); importing this module without it raises a
one-line ``MissingExtraError``. Tensor fields are read from ``struct ggml_tensor`` (ggml.h: ``type``, ``buffer``,
``ne[4]``, ``nb[4]``) because libggml exports no getter for the shape.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from tokensieve.errors import MissingExtraError

try:
    import llama_cpp.llama_cpp as lib
    from llama_cpp._ggml import libggml
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError(
        f"the llama.cpp engine needs llama-cpp-python ({e}): pip install -e '.[llamacpp]' (builds in ~3-4 min)"
    ) from None

GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
KV_TYPES = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2}
FLASH_ATTN = {"off": 0, "on": 1, "auto": -1}


class TensorHead(ctypes.Structure):
    """The leading fields of ``struct ggml_tensor`` (ggml.h, GGML_MAX_DIMS = 4)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),  # GGML_MAX_OP_PARAMS = 64 bytes
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),  # GGML_MAX_SRC
    ]


libggml.ggml_get_name.argtypes = [ctypes.c_void_p]
libggml.ggml_get_name.restype = ctypes.c_char_p
libggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
libggml.ggml_nbytes.restype = ctypes.c_size_t
libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
libggml.ggml_backend_tensor_get.restype = None
libggml.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
libggml.ggml_is_contiguous.restype = ctypes.c_bool


def tensor_name(t: int) -> str:
    return (libggml.ggml_get_name(t) or b"").decode("utf-8", "replace")


def tensor_shape(t: int) -> tuple[int, int, int, int, int]:
    """(type, ne0, ne1, ne2, ne3) of a ggml tensor pointer."""
    h = TensorHead.from_address(t)
    return h.type, h.ne[0], h.ne[1], h.ne[2], h.ne[3]


def tensor_source(t: int, i: int) -> int:
    """The ``i``-th source tensor of an op (0 when there is none): ``kq_soft_max``'s source 1 is its mask."""
    return TensorHead.from_address(t).src[i] or 0


def read_tensor(t: int) -> np.ndarray:
    """A contiguous f32/f16 tensor as a float32 array shaped [ne3, ne2, ne1, ne0] (ggml's ne0 is the fastest axis)."""
    typ, n0, n1, n2, n3 = tensor_shape(t)
    dtype = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16}.get(typ)
    if dtype is None or not libggml.ggml_is_contiguous(t):
        raise TypeError(f"tensor {tensor_name(t)!r}: type {typ} / layout not readable (f32 or f16, contiguous)")
    out = np.empty((n3, n2, n1, n0), dtype=dtype)
    libggml.ggml_backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
    return out.astype(np.float32, copy=False)


def read_strided(t: int) -> np.ndarray:
    """Any f32/f16 tensor, views with strides included (llama.cpp's transposed V cache view), as a float32 array
    shaped [ne3, ne2, ne1, ne0]: the bytes the view spans (``ggml_nbytes``), laid out by its strides ``nb``."""
    h = TensorHead.from_address(t)
    dtype = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16}.get(h.type)
    if dtype is None:
        raise TypeError(f"tensor {tensor_name(t)!r}: type {h.type} is not readable (f32 or f16)")
    raw = np.empty(libggml.ggml_nbytes(t), dtype=np.uint8)
    libggml.ggml_backend_tensor_get(t, raw.ctypes.data, 0, raw.nbytes)
    shape = (h.ne[3], h.ne[2], h.ne[1], h.ne[0])
    strides = (h.nb[3], h.nb[2], h.nb[1], h.nb[0])
    view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides, writeable=False)
    return view.astype(np.float32)


def eval_callback(fn: Any) -> Any:
    """Wrap ``fn(tensor_ptr, ask) -> bool`` as llama.cpp's ``cb_eval``; keep the returned object alive."""
    return lib.ggml_backend_sched_eval_callback(fn)


__all__ = [
    "FLASH_ATTN",
    "KV_TYPES",
    "eval_callback",
    "lib",
    "read_strided",
    "read_tensor",
    "tensor_name",
    "tensor_shape",
    "tensor_source",
]
