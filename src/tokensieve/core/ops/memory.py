"""Measured memory: bytes held by tensors, and the process's peak resident set."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor


def tensor_bytes(tensors: Iterable[Tensor | None]) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once (views share theirs)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())



def keys_and_values(layer: Any) -> list[Tensor | None]:
    """What a plain cache layer holds."""
    return [layer.keys, layer.values]


def layers_bytes(layers: Iterable[Any], held: Callable[[Any], Iterable[Tensor | None]] = keys_and_values) -> int:
    """Bytes held by the initialized layers of a transformers cache: ``held(layer)`` names the tensors a layer
    holds (its keys and values unless a layout says more); storages shared across layers count once."""
    return tensor_bytes(t for layer in layers if layer.is_initialized for t in held(layer))

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss() -> int:
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


def peak_rss() -> int:
    """Peak resident set (bytes) since the process started or since the last ``reset_peak_rss``."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakRSS:
    start: int = 0
    peak: int = 0
    reset: bool = False

    @property
    def delta(self) -> int:
        """Peak growth over the RSS at the start of the block."""
        return self.peak - self.start


@contextmanager
def track_peak_rss() -> Iterator[PeakRSS]:
    """Measure the peak RSS reached inside the block (the kernel's counter, reset at entry)."""
    rec = PeakRSS(reset=reset_peak_rss())
    rec.start = current_rss()
    try:
        yield rec
    finally:
        rec.peak = peak_rss()


def mib(n: int) -> float:
    return n / 2**20


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
