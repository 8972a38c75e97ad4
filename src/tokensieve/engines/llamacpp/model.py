"""Open a GGUF with llama.cpp: a bundled name or a file path, and the context that tokensieve scores in.

The context is made with ``kv_unified`` (one cell pool for every sequence, so ``seq_cp`` forks are free), two
sequences (0: the context, 1: forks for scoring passes and answers) and, for scoring, flash attention off and
``cb_eval`` set: the only way llama.cpp shows its attention probabilities.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from tokensieve.engines.llamacpp.attention import Tap
from tokensieve.engines.llamacpp.ffi import FLASH_ATTN, KV_TYPES, lib
from tokensieve.errors import ModelNotFoundError, ParameterError, UnsupportedArchitectureError
from tokensieve.runtime.models import BUNDLED

_quiet = lib.llama_log_callback(lambda level, text, user: None)  # llama.cpp logs every load to stderr otherwise
_backend = {"ready": False}


def gguf_path(model: str | os.PathLike) -> Path:
    """A bundled model's GGUF (``smollm2``, ``gemma3-270m``) or a ``.gguf`` file that exists."""
    name = str(model)
    if name in BUNDLED:
        return BUNDLED[name].gguf_path()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {name!r} is neither a bundled model ({', '.join(BUNDLED)}) nor an existing .gguf file"
        )
    return path


def _backend_init(verbose: bool) -> None:
    if not _backend["ready"]:
        lib.llama_backend_init()
        _backend["ready"] = True
    lib.llama_log_set(None if verbose else _quiet, None)


def _meta(model: int, key: str) -> str:
    buf = ctypes.create_string_buffer(256)
    n = lib.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else ""


@dataclass
class Settings:
    """What the context is made with. ``scoring=False`` makes a plain llama.cpp context (no ``cb_eval``)."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 256
    threads: int = 1
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "off"
    scoring: bool = True
    n_seq: int = 2
    verbose: bool = False

    def check(self) -> None:
        for name, value, choices in (
            ("type_k", self.type_k, KV_TYPES),
            ("type_v", self.type_v, KV_TYPES),
            ("flash_attn", self.flash_attn, FLASH_ATTN),
        ):
            if value not in choices:
                raise ParameterError(f"{name}={value!r}: use one of {', '.join(choices)}")
        for name in ("n_ctx", "n_batch", "n_ubatch", "threads", "n_seq"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"{name}={v!r} must be a positive whole number")


class Model:
    """A loaded GGUF and one llama.cpp context on it (freed by :meth:`close`)."""

    def __init__(self, model: str | os.PathLike, settings: Settings | None = None):
        self.settings = s = settings or Settings()
        s.check()
        self.path = gguf_path(model)
        _backend_init(s.verbose)
        mparams = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise UnsupportedArchitectureError(
                f"llama.cpp could not load {self.path.name}: not a GGUF file, or an architecture this llama.cpp "
                f"build does not know (llama-cpp-python {_version()})"
            )
        self.arch = _meta(self.model, "general.architecture")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_layer = lib.llama_model_n_layer(self.model)
        self.n_embd = lib.llama_model_n_embd(self.model)
        self.n_head = lib.llama_model_n_head(self.model)
        self.n_head_kv = lib.llama_model_n_head_kv(self.model)
        self.n_swa = lib.llama_model_n_swa(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.tap = Tap()
        c = lib.llama_context_default_params()
        c.n_ctx, c.n_batch, c.n_ubatch, c.n_seq_max = s.n_ctx, s.n_batch, min(s.n_ubatch, s.n_batch), s.n_seq
        c.n_threads = c.n_threads_batch = s.threads
        c.type_k, c.type_v = KV_TYPES[s.type_k], KV_TYPES[s.type_v]
        c.flash_attn_type = FLASH_ATTN[s.flash_attn]
        c.kv_unified = True
        c.swa_full = True  # a sliding-window layer keeps every cell, so cells mean the same in both caches
        c.no_perf = True
        if s.scoring:
            c.cb_eval = self.tap.c_callback
        self.ctx = lib.llama_init_from_model(self.model, c)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise ParameterError(f"llama.cpp refused the context settings {s} for {self.path.name}")
        self.mem = lib.llama_get_memory(self.ctx)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lib.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        self.close()


def _version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


__all__ = ["Model", "Settings", "gguf_path"]
