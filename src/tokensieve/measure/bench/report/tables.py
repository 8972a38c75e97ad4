"""Markdown tables of aggregated rows: method x keep pivots, the README's compact table, every cell."""

from __future__ import annotations

from tokensieve.measure.bench.report.aggregate import FIDELITY_ONLY, RETRIEVAL_ONLY, Row, complete, has_part, order
from tokensieve.measure.bench.report.results import FULL, fmt


def pivot(rows: list[Row], length: int, value, digits: int = 1, part: str | None = None) -> list[str]:
    rows = complete(rows, length, part)
    keeps = sorted({r.keep for r in rows if r.method != FULL}, reverse=True)
    table = {(r.method, r.keep): r for r in rows}
    full = next((r for r in rows if r.method == FULL), None)
    head = "| method | " + " | ".join(f"keep {k:g}" for k in keeps) + " |"
    lines = [head, "|---|" + "---:|" * len(keeps)]
    if full is not None:
        lines.append("| **full cache** | " + " | ".join(fmt(value(full), digits) for _ in keeps) + " |")
    for m in order(r.method for r in rows):
        if m == FULL:
            continue
        cells = [fmt(value(table[(m, k)]), digits) if (m, k) in table else "-" for k in keeps]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def headline(rows: list[Row], length: int) -> list[str]:
    """The all-tasks score per method x keep at one length."""
    return pivot(rows, length, lambda r: 100 * r.all_tasks)


def compact(rows: list[Row], lengths: list[int]) -> list[str]:
    """The README table: per length and method, three metrics, each as keep 0.5 / 0.25 / 0.1."""
    metrics = [
        m
        for m in (
            ("fidelity top-1 %", lambda r: 100 * r.fidelity.get("top1", float("nan")), 1, FIDELITY_ONLY),
            ("long-range KL (nats)", lambda r: r.kl_long, 3, FIDELITY_ONLY),
            ("retrieval %", lambda r: 100 * r.retrieval, 0, RETRIEVAL_ONLY),
        )
        if has_part(rows, m[3])
    ]
    if not metrics:
        return []
    keeps: list[float] = []
    lines = []
    for length in lengths:
        rs = complete(rows, length, metrics[0][3])
        keeps = sorted({r.keep for r in rs if r.method != FULL and r.keep < 1}, reverse=True)
        full = next((r for r in rs if r.method == FULL), None)
        for m in order(r.method for r in rs):
            vals = []
            for _name, value, digits, part in metrics:
                table = {(r.method, r.keep): r for r in complete(rows, length, part)}
                if m == FULL and full is not None:
                    vals.append(fmt(value(full), digits))
                elif (m, 1.0) in table:  # an attention modifier: every token kept, one value
                    vals.append(f"{fmt(value(table[(m, 1.0)]), digits)} (all tokens)")
                else:
                    vals.append(
                        " / ".join(fmt(value(table[(m, k)]), digits) if (m, k) in table else "-" for k in keeps)
                    )
            name = "**full cache**" if m == FULL else m
            lines.append(f"| {length} | {name} | " + " | ".join(vals) + " |")
    ks = " / ".join(f"{k:g}" for k in keeps)
    head = "| tokens | method | " + " | ".join(f"{n} (keep {ks})" for n, *_ in metrics) + " |"
    return [head, "|---:|---|" + "---:|" * len(metrics), *lines]


def detail(rows: list[Row], length: int, tasks: list[str]) -> list[str]:
    head = (
        "| method | keep | samples | all % | retrieval % (±95%) | "
        + " | ".join(tasks)
        + " | top-1 % | greedy % | KL | ΔNLL | KL long | ΔNLL long | KV MiB | kept | compress ms | eval s/cell |"
    )
    lines = [head, "|---|---:|---:|" + "---:|" * (len(tasks) + 12)]
    for r in (r for r in rows if r.length == length):
        f = r.fidelity
        lines.append(
            f"| {r.method} | {r.keep:g} | {sum(r.n.values())} | {fmt(100 * r.all_tasks)} | {fmt(100 * r.retrieval)} ± "
            f"{fmt(100 * r.retrieval_ci)} | "
            + " | ".join(fmt(100 * r.tasks[t]) if t in r.tasks else "-" for t in tasks)
            + f" | {fmt(100 * f.get('top1', float('nan')))} | {fmt(100 * f.get('greedy', float('nan')))} | "
            f"{fmt(f.get('kl', float('nan')), 3)} | {fmt(r.dnll, 3)} | {fmt(r.kl_long, 3)} | {fmt(r.dnll_long, 3)} | "
            f"{fmt(r.kv_mib)} | {fmt(r.kept, 3)} | "
            f"{fmt(r.compress_ms)} | {fmt(r.eval_s, 2)} |"
        )
    return lines
