"""Running a GGUF file in llama.cpp (llama-cpp-python) to measure it: quality against a source GGUF, and speed.

Quality: both models see the same token windows with llama.cpp's per-position logits (``logits_all``); each
position's row is read from llama.cpp's buffer and compared on its own (log-softmax in float64, KL(source ||
quantized), the next token's NLL under each, top-1 agreement), so no ``[T, vocab]`` array is built here.
Speed: prefill tokens/s (one ``eval`` of the prompt), decode tokens/s (one token per ``eval``), the process's
peak RSS (run each file in a fresh process so the figure is that file's alone).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokensieve.errors import ModelNotFoundError


def open_gguf(path: str | Path, threads: int = 1, n_ctx: int = 512, logits_all: bool = False):
    """A ``llama_cpp.Llama`` on ``path`` (raises ``ModelNotFoundError`` without the file or llama-cpp-python)."""
    if not Path(path).is_file():
        raise ModelNotFoundError(f"GGUF {path} does not exist")
    try:
        import llama_cpp
    except ImportError:
        raise ModelNotFoundError("running GGUF files needs llama-cpp-python: pip install llama-cpp-python") from None
    return llama_cpp.Llama(
        str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=n_ctx,
        logits_all=logits_all, verbose=False,
    )  # fmt: skip


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    x -= x.max()
    return x - math.log(np.exp(x).sum())


@dataclass
class Quality:
    kl: float  # mean KL(source || quantized) per predicted position
    ppl: float
    ppl_source: float
    top1: float  # positions where both argmaxes agree
    positions: int


def compare(source: str | Path, quantized: str | Path, windows: Sequence[Sequence[int]], threads: int = 1) -> Quality:
    """KL, perplexity and top-1 agreement of ``quantized`` against ``source`` on token ``windows``."""
    return compare_many(source, [quantized], windows, threads)[0]


def compare_many(
    source: str | Path, files: Sequence[str | Path], windows: Sequence[Sequence[int]], threads: int = 1
) -> list[Quality]:
    """``compare`` for several files at once: the source runs each window once, every file is read against it."""
    n_ctx = max(len(w) for w in windows)
    a = open_gguf(source, threads, n_ctx, logits_all=True)
    bs = [open_gguf(f, threads, n_ctx, logits_all=True) for f in files]
    sums = np.zeros((len(bs), 4))  # kl, nll, nll of the source, agreement
    n = 0
    for ids in windows:
        for llm in (a, *bs):
            llm.reset()
            llm.eval(list(ids))
        for t in range(len(ids) - 1):
            p = _log_softmax(a.scores[t])
            for i, b in enumerate(bs):
                q = _log_softmax(b.scores[t])
                sums[i] += (float(np.exp(p) @ (p - q)), -q[ids[t + 1]], -p[ids[t + 1]], float(p.argmax() == q.argmax()))
            n += 1
    return [Quality(s[0] / n, math.exp(s[1] / n), math.exp(s[2] / n), s[3] / n, n) for s in sums]


@dataclass
class Speed:
    threads: int
    prefill_tokens: int
    prefill_tok_s: float
    decode_tokens: int
    decode_tok_s: float
    rss_mb: float  # peak resident set of this process (VmHWM) after loading and running
    rss_base_mb: float  # the same just before loading the model (the interpreter and its imports)


def rates(llm, prompt: Sequence[int], decode: int, threads: int | None = None) -> tuple[float, float]:
    """One measurement on an open ``llm``: prefill tokens/s of ``prompt`` (one ``eval``), then decode tokens/s
    of ``decode`` single-token ``eval`` calls; ``threads`` switches the context's thread count first."""
    if threads is not None:
        import llama_cpp

        llama_cpp.llama_set_n_threads(llm.ctx, threads, threads)
    llm.reset()
    start = time.perf_counter()
    llm.eval(list(prompt))
    prefill = len(prompt) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(decode):
        llm.eval([prompt[i % len(prompt)]])  # the token fed does not change the work per step
    return prefill, decode / (time.perf_counter() - start)


def speed(path: str | Path, prompt: Sequence[int], decode: int = 32, threads: int = 1, repeats: int = 2) -> Speed:
    """Best of ``repeats`` prefill and decode rates (call in a fresh process for a clean RSS)."""
    base = _peak_rss_mb()
    llm = open_gguf(path, threads, n_ctx=len(prompt) + decode + 1)
    best = [max(x) for x in zip(*(rates(llm, prompt, decode) for _ in range(repeats)), strict=True)]
    return Speed(threads, len(prompt), best[0], decode, best[1], _peak_rss_mb(), base)


def _peak_rss_mb() -> float:
    """This process image's peak resident set: ``VmHWM`` (getrusage's maxrss survives exec, so a child started
    from a large parent would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def as_dict(x: Quality | Speed) -> dict[str, float]:
    return asdict(x)
