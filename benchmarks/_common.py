"""What the benchmark scripts share: the command line that reruns a run, writing its rows and its table, and the
one-forward-per-token decode loop (benchmarks only; run from the repository root)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from tokensieve.compat import with_cache


def command(script: str, args: argparse.Namespace, env: str = "") -> str:
    """The command that reruns ``benchmarks/<script>`` with ``args``: every option, in the parser's order."""
    options = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items())
    return f"{env + ' ' if env else ''}.venv/bin/python benchmarks/{script} {options}"


def write_results(out: Path, rows: list[dict[str, Any]] | None, lines: list[str]) -> None:
    """``out.jsonl`` (one row a line; None: the caller wrote it) and the table ``out.md``, printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        with open(out.with_suffix(".jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


def step_loop(model, cache, first_logits: torch.Tensor, n: int, forced: list[int] | None) -> dict[str, Any]:
    """One forward per token from a prefilled cache; greedy, or teacher-forced on ``forced`` (every token is fed,
    the last one too). ``agree`` = steps whose argmax is the fed token, ``nll`` = mean NLL of the fed tokens."""
    tokens, times, agree, nll = [], [], 0, 0.0
    logits = first_logits
    with torch.inference_mode():
        for step in range(n):
            greedy = int(logits.argmax(-1))
            nxt = greedy if forced is None else forced[step]
            agree += greedy == nxt
            nll -= float(torch.log_softmax(logits.float(), -1).view(-1)[nxt])
            tokens.append(nxt)
            t0 = time.perf_counter()
            logits = model(torch.tensor([[nxt]]), **with_cache(model, cache)).logits[:, -1]
            times.append(time.perf_counter() - t0)
    return {"tokens": tokens, "times": times, "agree": agree / n, "nll": nll / n}
