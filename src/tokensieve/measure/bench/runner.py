"""The sweep: samples x lengths x (method, keep) cells, one JSON line per cell, resumable.

Prefill once, compress many: each sample's context is prefilled once with the union of what every
method needs observed; every (method, keep) cell is then a ``Prefill.compress`` (milliseconds) plus its
evaluation, and cells of equal shape are evaluated together (``cells.stack``). kvpress cells run in a
subprocess (``kvpress_bridge.py``) on the same samples.

Samples run index-major (sample 0 of every task and length, then sample 1, ...), so a run stopped early
still covers every task; ``results.jsonl`` is appended as cells finish and cells already there are
skipped on the next run.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# the sweep's parts, re-exported where they were imported before the split
from tokensieve.measure.bench.plan import AGNOSTIC, AWARE, FULL, Config, Todo, cell_key, load_done, plan
from tokensieve.measure.bench.sweep import Env, run_kvpress, run_tokensieve
from tokensieve.provenance import provenance
from tokensieve.runtime.corpus import fingerprint


def meta(cfg: Config) -> dict[str, Any]:
    import transformers

    from tokensieve.runtime.corpus import DEFAULT_SOURCES

    return {
        "type": "meta",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": cfg.model,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "corpus": fingerprint(DEFAULT_SOURCES),
        "tasks": [t.spec() for t in cfg.tasks],
        "lengths": cfg.lengths,
        "methods": [m.label for m in cfg.methods],
        "keeps": cfg.keeps,
        "samples": cfg.samples,
        "presses": [p.label for p in cfg.presses],
        "compare_samples": cfg.compare_samples,
        "query_aware": cfg.query_aware,
        "max_batch": cfg.max_batch,
    }


def run(cfg: Config, console: Console | None = None, command: str = "") -> Path:
    """Run (or resume) the sweep into ``cfg.out``; returns the results path."""
    console = console or Console(stderr=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / "results.jsonl"
    todos = plan(cfg, load_done(path))
    total = sum(t.n for t in todos)
    if not todos:
        console.print(f"[tokensieve] all cells are already in {path}")
        return path
    env = Env(cfg)
    bridge = None
    if any(t.kvpress for t in todos):
        from tokensieve.measure.bench.kvpress_bridge import Bridge

        bridge = Bridge(cfg.model, cfg.threads, cfg.kvpress_python, cfg.out / "kvpress_worker.log")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with open(path, "a") as f, Progress(*columns, console=console) as bar:
            if f.tell() and not path.read_bytes().endswith(b"\n"):
                f.write("\n")  # a line cut by an interrupted run stays alone (and is ignored)
            versions = bridge.versions if bridge is not None else None
            # provenance: the command, commit, package versions and machine of this invocation
            prov = provenance(command or None)
            record = {**meta(cfg), "command": command, "kvpress_versions": versions, "provenance": prov}
            f.write(json.dumps(record) + "\n")
            job = bar.add_task("cells", total=total)
            for todo in todos:
                sample = todo.task.sample(env.tok, todo.length, todo.index, cfg.seed)
                name = f"{todo.task.spec()} @{todo.length} #{todo.index}"
                for setting, cells in todo.tokensieve.items():
                    bar.update(job, description=f"{name} tokensieve/{setting}")
                    for rec in run_tokensieve(env, todo, sample, setting, cells):
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        if rec["type"] == "cell":
                            bar.advance(job)
                if todo.kvpress and bridge is not None:
                    bar.update(job, description=f"{name} kvpress")
                    for rec in run_kvpress(bridge, cfg, todo, sample):
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        bar.advance(job)
    finally:
        if bridge is not None:
            bridge.close()
    return path


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


__all__ = [
    "AGNOSTIC",
    "AWARE",
    "FULL",
    "Config",
    "Env",
    "Todo",
    "cell_key",
    "load_done",
    "meta",
    "parse_floats",
    "parse_ints",
    "plan",
    "run",
    "run_kvpress",
    "run_tokensieve",
]
