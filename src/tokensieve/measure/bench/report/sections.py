"""The summary's closing sections: sparse-decoding reads, the sweep's cost, and how many samples a difference needs."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from tokensieve.measure.bench.methods import default_methods
from tokensieve.measure.bench.report.aggregate import Row, paired_sd
from tokensieve.measure.bench.report.results import FULL, Results, fmt, mean, sweep_samples, task_kind
from tokensieve.stats import normal_quantile


def sparse_section(res: Results) -> list[str]:
    """Sparse-decoding cells: they hold the whole cache; what they save is what each decode step reads."""
    cells = [c for c in res.cells if c.get("read") and c["read"].get("sparse_steps")]
    if not cells:
        return []
    by: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        by[(c["length"], c.get("setting", "agnostic"), c["method"], c["keep"], task_kind(c["task"]))].append(c)
    lines = [
        "## Sparse decoding: what each decode step read",
        "",
        "Sparse-decoding specs keep the whole prefilled cache (KV MiB = the full cache's); `keep` is their read",
        "budget, the fraction of held tokens attended per decode step. `read` is the measured fraction of the",
        "cache's K/V bytes each decode step touched (scoring metadata or keys + the attended keys and values; a",
        "layer that reads everything counts 1), mean over layers and steps; the question's own forward is dense",
        "and not counted. Fidelity cells decode the continuation one token per forward.",
        "",
        "| length | setting | method | keep (read budget) | tasks | cells | read % | attended % | score % |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for (length, setting, method, keep, kind), cs in sorted(
        by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], kv[0][2], -kv[0][3])
    ):
        lines.append(
            f"| {length} | {setting} | {method} | {keep:g} | {kind} | {len(cs)} | "
            f"{fmt(100 * mean(c['read']['read_fraction'] for c in cs))} | "
            f"{fmt(100 * mean(c['read']['attended_fraction'] for c in cs))} | "
            f"{fmt(100 * mean(c['score'] for c in cs))} |"
        )
    return [*lines, ""]


def cost_section(res: Results, rows: list[Row]) -> list[str]:
    by = sweep_samples(res)
    if not by:
        return []
    spent: dict[tuple, dict[str, float]] = defaultdict(lambda: {"compress": 0.0, "eval": 0.0})
    main = {FULL, *(m.label for m in default_methods())}  # cells of later top-up runs are not the sweep's
    for c in res.select(engine="tokensieve", setting="agnostic"):
        if c["method"] not in main:
            continue
        d = spent[(c["task"], c["length"], c["sample"])]
        d["compress"] += c.get("compress_seconds", 0.0)
        d["eval"] += c.get("eval_seconds", 0.0)
    kv_full: dict[tuple[int, str], list[float]] = defaultdict(list)
    for c in res.select(engine="kvpress", method=FULL):
        kv_full[(c["length"], c["kind"])].append(c["wall_seconds"])
    lines = [
        "## Cost of the sweep (prefill once, compress many)",
        "",
        "Per sample of the main sweep, from this run's own timings (one thread on a shared, loaded machine; the",
        "dedicated speed run gives the ratios to quote). `prefill`: the one forward pass with the union of every",
        "method's observations; `compress`: every cell's scoring and eviction; `eval`: every cell's evaluation",
        "(answers, or the teacher-forced passes), batched; `sweep`: all of it. `full pass`: kvpress's `press=None`",
        "cell on the same kind of sample (a plain prefill plus the same evaluation, in kvpress's environment); the",
        "naive sweep is one full pass per cell.",
        "",
        "| length | task kind | samples | cells/sample | prefill s | compress s | eval s | sweep s | sweep s/cell | "
        "full pass s | sweep ÷ full pass | naive ÷ sweep |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (length, kind), ss in sorted(by.items()):
        cells = mean(x["cells"] for x in ss)
        sweep = mean(x["wall_seconds"] for x in ss)
        comp = mean(spent[(x["task"], x["length"], x["sample"])]["compress"] for x in ss)
        ev = mean(spent[(x["task"], x["length"], x["sample"])]["eval"] for x in ss)
        full = mean(kv_full[(length, kind)]) if kv_full[(length, kind)] else float("nan")
        lines.append(
            f"| {length} | {kind} | {len(ss)} | {fmt(cells, 0)} | {fmt(mean(x['prefill_seconds'] for x in ss), 2)} | "
            f"{fmt(comp, 2)} | {fmt(ev, 2)} | {fmt(sweep, 2)} | {fmt(sweep / cells, 3)} | {fmt(full, 2)} | "
            f"{fmt(sweep / full, 2)} | {fmt(cells * full / sweep, 1)} |"
        )
    lines.append("")
    return lines


def samples_section(res: Results, rows: list[Row]) -> list[str]:
    metrics = (
        ("fidelity: top-1 agreement", "fidelity", lambda c: c["metrics"]["top1"]),
        ("fidelity: greedy agreement", "fidelity", lambda c: c["metrics"]["greedy"]),
        ("retrieval: task score (all retrieval tasks pooled)", "retrieval", lambda c: c["score"]),
    )
    cost = {(kind, length): [x["wall_seconds"] for x in ss] for (length, kind), ss in sweep_samples(res).items()}
    lines = [
        "## How many samples a 5-point difference needs",
        "",
        "Methods are compared on the same samples, so what matters is the spread of their per-sample score",
        "*differences*. With standard deviation `sd` of those differences, a 5-point difference is resolved at",
        "95% once `z * sd / sqrt(n) <= 0.05`, i.e. `n >= (z * sd / 0.05)^2` (z = 1.96). `sd` is measured in this run",
        "(median over every pair of methods at the same length and keep); the cost is this run's sweep time per",
        "sample (every method and keep), one thread on a shared machine.",
        "",
        "| metric | sd of paired differences | samples needed | samples per length here | sweep s/sample (1k / 2k) |"
        " one-core hours for the needed samples (1k + 2k) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    any_row = False
    for name, kind, metric in metrics:
        sd = paired_sd(res, metric, kind).get(kind)
        if sd is None:
            continue
        any_row = True
        need = math.ceil((normal_quantile() * sd / 0.05) ** 2)
        full = res.select(engine="tokensieve", kind=kind, method=FULL, setting="agnostic")
        lengths = sorted({c["length"] for c in full})
        per_len = len(full) / max(1, len(lengths))
        secs = [mean(cost.get((kind, n), [])) for n in lengths]
        hours = need * sum(x for x in secs if not math.isnan(x)) / 3600
        lines.append(
            f"| {name} | {sd:.3f} | {need} | {per_len:.0f} | {' / '.join(fmt(x, 0) for x in secs)} | {hours:.1f} |"
        )
    lines.append("")
    return lines if any_row else []
