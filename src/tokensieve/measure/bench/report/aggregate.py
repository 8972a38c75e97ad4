"""Per (length, method, keep): the aggregates over every task and sample, and which rows are comparable."""

from __future__ import annotations

import math
import statistics as st
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from tokensieve.measure.bench.report.results import FIDELITY_KEYS, FULL, Results, half_ci, mean
from tokensieve.stats import normal_quantile

FIDELITY_ONLY = "fidelity"
RETRIEVAL_ONLY = "retrieval"


def order(methods: Iterable[str]) -> list[str]:
    """The full cache first, then the methods by name."""
    names = set(methods)
    return ([FULL] if FULL in names else []) + sorted(names - {FULL})


@dataclass
class Row:
    """Aggregates of one (length, method, keep) over every task and sample."""

    length: int
    method: str
    keep: float
    tasks: dict[str, float]  # task -> mean score (0..1)
    n: dict[str, int]
    retrieval: float
    retrieval_ci: float
    fidelity: dict[str, float]
    fidelity_ci: dict[str, float]
    dnll: float
    kl_long: float
    dnll_long: float
    all_tasks: float
    kv_mib: float
    kept: float
    compress_ms: float
    eval_s: float


def aggregate(res: Results, engine: str = "tokensieve", setting: str = "agnostic") -> list[Row]:
    cells = res.select(engine=engine, setting=setting)
    full_m = {
        (c["task"], c["length"], c["sample"]): c["metrics"] for c in cells if c["method"] == FULL and c.get("metrics")
    }
    by: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        by[(c["length"], c["method"], c["keep"])].append(c)
    rows = []
    for (length, method, keep), cs in sorted(by.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][1])):
        per_task: dict[str, list[float]] = defaultdict(list)
        for c in cs:
            per_task[c["task"]].append(c["score"])
        retrieval_tasks = [t for t in per_task if any(c["kind"] == "retrieval" for c in cs if c["task"] == t)]
        task_means = {t: mean(v) for t, v in per_task.items()}
        # macro average over retrieval tasks; its CI from per-task standard errors
        ret = mean(task_means[t] for t in retrieval_tasks)
        ses = [
            (st.stdev(per_task[t]) / math.sqrt(len(per_task[t]))) if len(per_task[t]) > 1 else 0.0
            for t in retrieval_tasks
        ]
        ret_ci = normal_quantile() * math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else float("nan")
        fid = [c for c in cs if c["kind"] == "fidelity"]
        fidelity = {k: mean(c["metrics"][k] for c in fid) for k in FIDELITY_KEYS} if fid else {}
        fidelity_ci = {k: half_ci([c["metrics"][k] for c in fid]) for k in FIDELITY_KEYS} if fid else {}
        dn, dn_long = [], []
        for c in fid:
            ref = full_m.get((c["task"], c["length"], c["sample"]))
            if ref is not None:
                dn.append(c["metrics"]["nll"] - ref["nll"])
                if c["metrics"].get("nll_long") is not None and ref.get("nll_long") is not None:
                    dn_long.append(c["metrics"]["nll_long"] - ref["nll_long"])
        kl_long = [c["metrics"]["kl_long"] for c in fid if c["metrics"].get("kl_long") is not None]
        rows.append(
            Row(
                length,
                method,
                keep,
                task_means,
                {t: len(v) for t, v in per_task.items()},
                ret,
                ret_ci,
                fidelity,
                fidelity_ci,
                mean(dn),
                mean(kl_long),
                mean(dn_long),
                mean(task_means.values()),
                mean(c["kv_bytes"] for c in cs) / 2**20,
                mean(c["kv_bytes"] / c["kv_bytes_full"] for c in cs if c.get("kv_bytes_full")),
                1000 * mean(c.get("compress_seconds", 0.0) for c in cs),
                mean(c.get("eval_seconds", 0.0) for c in cs),
            )
        )
    return rows


def covers(r: Row, full: Row, part: str | None) -> bool:
    tasks = [t for t in full.n if part is None or (t == "fidelity") == (part == FIDELITY_ONLY)]
    return bool(tasks) and all(r.n.get(t) == full.n[t] for t in tasks)


def has_part(rows: list[Row], part: str) -> bool:
    """Whether the run has any task of ``part`` (fidelity or retrieval): a section without one stays out of
    the summary instead of printing an empty table."""
    return any((t == "fidelity") == (part == FIDELITY_ONLY) for r in rows if r.method == FULL for t in r.n)


def complete(rows: list[Row], length: int, part: str | None = None) -> list[Row]:
    """The rows that ran every task and sample the full cache ran at this length (``part``: only its
    fidelity or only its retrieval tasks): only they are comparable in a pivot (specs added for the kvpress
    comparison ran on a subset and appear in the detail table)."""
    full = next((r for r in rows if r.length == length and r.method == FULL), None)
    if full is None:
        return [r for r in rows if r.length == length]
    return [r for r in rows if r.length == length and covers(r, full, part)]


def paired_sd(res: Results, metric, kind: str, engine: str = "tokensieve") -> dict[str, float]:
    """Per task kind: the median, over pairs of methods at the same (length, keep), of the standard
    deviation of per-sample differences. What decides how many samples resolve a difference."""
    cells = res.select(engine=engine, setting="agnostic", kind=kind)
    by: dict[tuple, dict[str, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    for c in cells:
        if c["method"] == FULL:
            continue
        by[(c["kind"], c["length"], c["keep"])][c["method"]][(c["task"], c["sample"])] = metric(c)
    out: dict[str, list[float]] = defaultdict(list)
    for (kind, _l, _k), methods in by.items():
        names = sorted(methods)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                common = set(methods[a]) & set(methods[b])
                d = [methods[a][s] - methods[b][s] for s in common]
                if len(d) > 2:
                    out[kind].append(st.stdev(d))
    return {k: st.median(v) for k, v in out.items() if v}
