"""What a sweep still has to run: its configuration, the cells already in ``results.jsonl``, and the cells
each sample needs per engine and setting (index-major, so a run stopped early still covers every task)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokensieve.measure.bench.methods import MethodSpec, Press
from tokensieve.measure.tasks import Task

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
