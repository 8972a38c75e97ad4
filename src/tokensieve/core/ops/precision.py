"""Whether a device computes bfloat16 natively (kvzip's default precision follows it)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that run bf16 dot products natively


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls are native: a CUDA device that supports bf16, or a CPU with AVX512-BF16 or AMX
    (``torch.backends.cpu.get_cpu_capability()`` says only "AVX512", so the flags decide)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & set(BF16_CPU_FLAGS))
    return False


def auto_precision(device: torch.device | str) -> str:
    """``"bf16"`` where native, else ``"fp32"``."""
    return "bf16" if native_bf16(device) else "fp32"
