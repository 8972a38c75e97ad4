"""Where a results file came from: the command line, the git commit (and whether the tree had uncommitted
changes), the package versions and the machine. Every results writer records ``provenance()`` so a figure can be
traced to what made it; nothing here is estimated (versions come from the installed distributions, the commit
from git, the CPU from the OS)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "command_line", "git_state", "machine", "markdown", "provenance", "versions"]

# the distributions whose version changes a figure; absent ones (llama-cpp-python, kvpress) are left out
PACKAGES = ("tokensieve", "torch", "transformers", "numpy", "llama-cpp-python", "kvpress", "gguf")


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``python <script> <args>`` (or the console script), shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(argv)


def git_state(where: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding ``where`` (default: this package's source);
    ``{"commit": None, "dirty": None}`` outside a git checkout (an installed wheel)."""
    cwd = where or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out)."""
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, logical cores, torch threads and GPU (when torch is loaded), OS and Python."""
    out: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    torch = sys.modules.get("torch")  # not imported here: a results writer that never loaded torch has no GPU
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    return out


def provenance(command: str | None = None) -> dict[str, Any]:
    """Everything a results file records about its run. ``command``: the command that reruns it (default: this
    process's own command line)."""
    git = git_state()
    return {
        "command": command if command is not None else command_line(),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "versions": versions(),
        "machine": machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def markdown(prov: dict[str, Any]) -> list[str]:
    """The provenance as lines for the foot of a Markdown results table."""
    commit = prov.get("git_commit") or "not a git checkout"
    if prov.get("git_dirty"):
        commit += " (uncommitted changes)"
    m = prov.get("machine", {})
    where = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores" + (f", {m['gpu']}" if m.get("gpu") else "")
    return [
        "",
        f"Command: `{prov.get('command', '')}`  ",
        f"Commit: {commit}; {prov.get('time', '')}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items()) + "  ",
        f"Machine: {where}; Python {m.get('python', '?')}",
    ]
