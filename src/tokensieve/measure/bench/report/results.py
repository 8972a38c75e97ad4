"""Loading a ``results.jsonl`` into cells, samples and run metadata, and the few numbers every table uses."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokensieve.stats import t_interval

FULL = "full"
FIDELITY_KEYS = ("nll", "kl", "top1", "greedy")


@dataclass
class Results:
    cells: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    meta: list[dict[str, Any]]
    errors: list[dict[str, Any]] = field(default_factory=list)  # cells that failed (e.g. a kvpress press)

    @classmethod
    def load(cls, path: Path) -> Results:
        cells: dict[tuple, dict] = {}
        samples: dict[tuple, dict] = {}
        meta, errors = [], []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = rec.get("type")
            if kind == "cell" and "error" in rec:
                errors.append(rec)
            elif kind == "cell":
                key = (rec["engine"], rec["task"], rec["length"], rec["sample"], rec["method"], rec["keep"])
                cells[(*key, rec["setting"])] = rec  # a re-run cell replaces the old one
            elif kind == "sample":
                # a sample resumed in several runs has several records: keep the one that ran the most cells
                key = (rec["engine"], rec["task"], rec["length"], rec["sample"], rec["setting"])
                if key not in samples or rec["cells"] >= samples[key]["cells"]:
                    samples[key] = rec
            elif kind == "meta":
                meta.append(rec)
        done = {(c["engine"], c["task"], c["length"], c["sample"], c["method"], c["keep"]) for c in cells.values()}
        errors = [
            e for e in errors if (e["engine"], e["task"], e["length"], e["sample"], e["method"], e["keep"]) not in done
        ]
        return cls(list(cells.values()), list(samples.values()), meta, errors)

    def select(self, **want: Any) -> list[dict[str, Any]]:
        return [c for c in self.cells if all(c.get(k) == v for k, v in want.items())]


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def half_ci(xs: list[float]) -> float:
    """95% Student-t half-width of the mean over samples (nan for one sample)."""
    return t_interval(xs).half


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def task_kind(task: str) -> str:
    return "fidelity" if task.split(":")[0] == "fidelity" else "retrieval"


def sweep_samples(res: Results) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Per (length, task kind): the tokensieve sample records of the main sweep, i.e. with the most common
    cell count (a later top-up run of a few specs on some samples is left out of costs)."""
    by: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for smp in res.samples:
        if smp["engine"] == "tokensieve" and smp["setting"] == "agnostic":
            by[(smp["length"], task_kind(smp["task"]))].append(smp)
    for key, ss in by.items():
        mode = Counter(x["cells"] for x in ss).most_common(1)[0][0]
        by[key] = [x for x in ss if x["cells"] == mode]
    return by
