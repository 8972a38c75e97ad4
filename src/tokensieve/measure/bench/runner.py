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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tokensieve.core.ops.memory import peak_rss, reset_peak_rss, track_peak_rss
from tokensieve.kv.pipeline import Compressed, Prefill, compress, prefill
from tokensieve.measure.bench import cells as ev
from tokensieve.measure.bench.methods import MethodSpec, Press
from tokensieve.measure.bench.metrics import SHORT_CONTEXT
from tokensieve.measure.tasks import Sample, Task
from tokensieve.measure.tasks.base import score
from tokensieve.runtime.corpus import fingerprint
from tokensieve.runtime.prompts import PromptFormat, clean_answer

FULL = "full"
AGNOSTIC, AWARE = "agnostic", "aware"


@dataclass
class Config:
    tasks: list[Task]
    lengths: list[int]
    methods: list[MethodSpec]
    keeps: list[float]
    samples: int
    out: Path
    model: str = "smollm2"
    seed: int = 0
    presses: list[Press] = field(default_factory=list)  # --compare kvpress
    compare_samples: int | None = None  # kvpress cells only for the first N samples of each task x length
    query_aware: bool = False
    threads: int | None = 1
    max_batch: int = 8
    kvpress_python: str | None = None
    naive: bool = False  # one prefill per cell (the cost the shared prefill avoids): for speed runs

    @property
    def engine(self) -> str:
        return "tokensieve-naive" if self.naive else "tokensieve"

    def settings(self, task: Task) -> list[str]:
        return [AGNOSTIC, AWARE] if self.query_aware and task.kind == "retrieval" else [AGNOSTIC]


def cell_key(rec: dict[str, Any]) -> tuple:
    return (rec["engine"], rec["task"], rec["length"], rec["sample"], rec["method"], rec["keep"], rec["setting"])


def load_done(path: Path) -> set[tuple]:
    done: set[tuple] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run: that cell runs again
                continue
            if rec.get("type") == "cell":  # a failed cell too: failures are deterministic, not retried
                done.add(cell_key(rec))
    return done


@dataclass
class Todo:
    """The cells one sample still needs, per engine and setting."""

    task: Task
    length: int
    index: int
    tokensieve: dict[str, list[tuple[MethodSpec | None, float]]]  # setting -> [(spec or None=full, keep)]
    kvpress: list[tuple[Press | None, float]]

    @property
    def n(self) -> int:
        return sum(len(v) for v in self.tokensieve.values()) + len(self.kvpress)


def plan(cfg: Config, done: set[tuple]) -> list[Todo]:
    out = []
    for index in range(cfg.samples):
        for length in cfg.lengths:
            for task in cfg.tasks:
                ts_cells: dict[str, list] = {}
                for setting in cfg.settings(task):
                    want = [(None, 1.0)] + [(m, 1.0) for m in cfg.methods if m.modifier]
                    want += [(m, k) for k in cfg.keeps for m in cfg.methods if not m.modifier]
                    ts_cells[setting] = [
                        (m, k)
                        for m, k in want
                        if (cfg.engine, task.spec(), length, index, m.label if m else FULL, k, setting) not in done
                    ]
                kv: list = []
                if cfg.presses and (cfg.compare_samples is None or index < cfg.compare_samples):
                    want_kv = [(None, 1.0)] + [(p, k) for k in cfg.keeps for p in cfg.presses]
                    kv = [
                        (p, k)
                        for p, k in want_kv
                        if ("kvpress", task.spec(), length, index, p.label if p else FULL, k, AGNOSTIC) not in done
                    ]
                    if kv and all(p is None for p, _ in kv):
                        kv = []  # only the reference left: nothing to compare (it was written with them)
                todo = Todo(task, length, index, {s: c for s, c in ts_cells.items() if c}, kv)
                if todo.n:
                    out.append(todo)
    return out


class Env:
    def __init__(self, cfg: Config) -> None:
        from tokensieve.runtime.models import load_model

        self.cfg = cfg
        self.model, self.tok = load_model(cfg.model)
        self.fmt = PromptFormat(self.tok)


def _base(cfg: Config, sample: Sample, task: Task, length: int, setting: str, engine: str) -> dict[str, Any]:
    return {
        "type": "cell",
        "engine": engine,
        "model": cfg.model,
        "task": task.spec(),
        "kind": task.kind,
        "length": length,
        "sample": sample.index,
        "seed": cfg.seed,
        "setting": setting,
    }


def _retrieval_fields(sample: Sample, answers: list[str]) -> dict[str, Any]:
    scores, items = [], []
    for q, a in zip(sample.questions, answers, strict=True):
        s, hits = score(a, q)
        scores.append(s)
        items.extend([it.depth, h] for it, h in zip(q.items, hits, strict=True))
    return {"score": sum(scores) / len(scores), "answers": answers, "items": items}


def _record_stats(c: Compressed) -> dict[str, Any]:
    s = c.stats
    return {
        "context_tokens": s.context_tokens,
        "kv_bytes": s.kv_bytes,
        "kv_bytes_full": s.kv_bytes_full,
        "tokens_held": round(ev.mean_held(s), 2),
        "compress_seconds": round(s.compress_seconds, 5),
    }


def _read_fields(c: Compressed) -> dict[str, Any]:
    stats = ev.read_stats(c)
    return {} if stats is None else {"read": {k: round(v, 5) for k, v in stats.items()}}


def run_tokensieve(env: Env, todo: Todo, sample: Sample, setting: str, cells: list) -> Iterator[dict[str, Any]]:
    """Every tokensieve cell of one sample and setting, from one prefill (``naive``: one per cell)."""
    cfg, model, tok = env.cfg, env.model, env.tok
    shared = [m for m, _ in cells if m is not None and not m.sparse and not m.modifier]
    methods = [] if cfg.naive else [m.method() for m in shared]
    reset_peak_rss()
    wall = time.perf_counter()
    if sample.context_ids is not None:  # fidelity: plain token ids
        context = torch.tensor([sample.context_ids])
    elif setting == AGNOSTIC:
        context = sample.context
    else:  # query-aware: the question (all but its last token) is part of the compressed prompt
        q = sample.questions[0]
        ids = env.fmt.context_ids(sample.context) + env.fmt.question_ids(q.text, q.answer_prefix)
        context, last = torch.tensor([ids[:-1]]), ids[-1]
    pre: Prefill = prefill(model, tok, context, methods=methods)
    base = _base(cfg, sample, todo.task, todo.length, setting, cfg.engine)
    full = pre.full()
    ref = None
    if sample.context_ids is not None:
        first = int(pre.last_logits[0].argmax())
        t0 = time.perf_counter()
        lead = sample.context_ids[: sample.meta.get("lead", 0)]
        short = [*lead, *sample.context_ids[len(lead) :][-SHORT_CONTEXT:]]
        ref = ev.FidelityRef.build(full, sample.continuation, first, sample.meta["greedy"], short)
        ref_seconds = time.perf_counter() - t0

    def evaluate(c: Compressed, rows: int) -> tuple[list[dict[str, Any]], float]:
        if ref is not None:
            t = ev.fidelity_rows(c, ref)
            return [{"score": r["top1"], "metrics": r} for r in t.value], t.seconds
        per_row: list[list[str]] = [[] for _ in range(rows)]
        seconds = 0.0
        for q in sample.questions:
            t = ev.answer_rows(c, q, rows) if setting == AGNOSTIC else ev.answer_last_token(c, last, q, rows)
            seconds += t.seconds
            for r, a in enumerate(t.value):
                per_row[r].append(a)
        return [_retrieval_fields(sample, a) for a in per_row], seconds

    if any(m is None for m, _ in cells):
        out, seconds = evaluate(full, 1)
        if ref is not None:
            seconds += ref_seconds
        yield {
            **base,
            "method": FULL,
            "keep": 1.0,
            **out[0],
            **_record_stats(full),
            "prefill_seconds": round(pre.seconds, 4),
            "eval_seconds": round(seconds, 4),
            "batch": 1,
        }
    for spec in (m for m, _ in cells if m is not None and m.modifier):  # their own prefill, keep 1.0
        with track_peak_rss() as rss:
            c = compress(model, tok, context, spec.method(), keep=1.0)
            out, seconds = evaluate(c, 1)
        yield {
            **base,
            "method": spec.label,
            "keep": 1.0,
            **out[0],
            **_record_stats(c),
            "prefill_seconds": round(c.stats.prefill_seconds, 4),
            "eval_seconds": round(seconds, 4),
            "batch": 1,
            "rss_peak": rss.peak,
        }
    for keep in cfg.keeps:
        specs = [m for m, k in cells if m is not None and k == keep and not m.modifier]
        if cfg.naive:  # each cell from its own prefill, evaluated alone, with its own peak RSS
            for spec in specs:
                with track_peak_rss() as rss:
                    if spec.sparse:
                        c = ev.sparse_cell(prefill(model, tok, context), spec.method(), keep)
                    else:
                        c = compress(
                            model, tok, context, spec.method(), keep=keep, allocator=spec.allocator, **spec.page_kwargs
                        )
                    out, seconds = evaluate(c, 1)
                yield {
                    **base,
                    "method": spec.label,
                    "keep": keep,
                    **out[0],
                    **_record_stats(c),
                    "prefill_seconds": round(c.stats.prefill_seconds, 4),
                    "eval_seconds": round(seconds, 4),
                    "batch": 1,
                    "rss_peak": rss.peak,
                    **_read_fields(c),
                }
            continue
        compressed = [
            ev.sparse_cell(pre, m.method(), keep)
            if m.sparse
            else pre.compress(m.method(), keep=keep, allocator=m.allocator, **m.page_kwargs)
            for m in specs
        ]
        for group in ev.groups(compressed, cfg.max_batch):
            batch = ev.stack([compressed[i] for i in group])
            out, seconds = evaluate(batch, len(group))
            for row, i in enumerate(group):
                c = compressed[i]
                yield {
                    **base,
                    "method": specs[i].label,
                    "keep": keep,
                    **out[row],
                    **_record_stats(c),
                    "prefill_seconds": round(pre.seconds, 4),
                    "eval_seconds": round(seconds / len(group), 4),
                    "batch": len(group),
                    **_read_fields(c),
                }
            del batch
        del compressed
    yield {
        "type": "sample",
        "engine": cfg.engine,
        "task": todo.task.spec(),
        "length": todo.length,
        "sample": sample.index,
        "setting": setting,
        "cells": len(cells),
        "prefill_seconds": round(pre.seconds, 4),
        "wall_seconds": round(time.perf_counter() - wall, 4),
        "observed_bytes": sum(o.nbytes for o in pre.observations.values()),
        "rss_peak": peak_rss(),
    }


def run_kvpress(bridge, cfg: Config, todo: Todo, sample: Sample) -> Iterator[dict[str, Any]]:
    base = _base(cfg, sample, todo.task, todo.length, AGNOSTIC, "kvpress")
    for p, keep, res in bridge.run(sample, todo.kvpress):
        rec = {**base, "method": p.label if p else FULL, "keep": keep}
        if "error" in res:
            yield {**rec, "error": res["error"]}
            continue
        if sample.context_ids is not None:
            m = res["metrics"]
            fields = {"score": m["top1"], "metrics": {**m, "target_logprobs": res["target_logprobs"]}}
        else:
            fields = _retrieval_fields(sample, [clean_answer(a) for a in res["answers"]])
        yield {
            **rec,
            **fields,
            "context_tokens": res["context_tokens"],
            "kv_bytes": res["kv_bytes"],
            "tokens_held": round(sum(res["tokens_held"]) / max(1, len(res["tokens_held"])), 2),
            "wall_seconds": round(res["seconds"], 4),
            "rss_peak": res.get("rss_peak"),
        }


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
            f.write(json.dumps({**meta(cfg), "command": command, "kvpress_versions": versions}) + "\n")
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


__all__ = ["Config", "cell_key", "load_done", "plan", "run"]
