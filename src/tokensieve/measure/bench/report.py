"""summary.md and PNG plots from a ``results.jsonl`` (also usable alone: ``tokensieve bench --report-only``)."""

from __future__ import annotations

import json
import math
import statistics as st
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokensieve.measure.bench.methods import PRESSES, default_methods

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
    """95% half-width of the mean (normal approximation)."""
    return 1.96 * st.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _order(methods: Iterable[str]) -> list[str]:
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
        ret_ci = 1.96 * math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else float("nan")
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


FIDELITY_ONLY = "fidelity"
RETRIEVAL_ONLY = "retrieval"


def _covers(r: Row, full: Row, part: str | None) -> bool:
    tasks = [t for t in full.n if part is None or (t == "fidelity") == (part == FIDELITY_ONLY)]
    return bool(tasks) and all(r.n.get(t) == full.n[t] for t in tasks)


def complete(rows: list[Row], length: int, part: str | None = None) -> list[Row]:
    """The rows that ran every task and sample the full cache ran at this length (``part``: only its
    fidelity or only its retrieval tasks): only they are comparable in a pivot (specs added for the kvpress
    comparison ran on a subset and appear in the detail table)."""
    full = next((r for r in rows if r.length == length and r.method == FULL), None)
    if full is None:
        return [r for r in rows if r.length == length]
    return [r for r in rows if r.length == length and _covers(r, full, part)]


def _pivot(rows: list[Row], length: int, value, digits: int = 1, part: str | None = None) -> list[str]:
    rows = complete(rows, length, part)
    keeps = sorted({r.keep for r in rows if r.method != FULL}, reverse=True)
    table = {(r.method, r.keep): r for r in rows}
    full = next((r for r in rows if r.method == FULL), None)
    head = "| method | " + " | ".join(f"keep {k:g}" for k in keeps) + " |"
    lines = [head, "|---|" + "---:|" * len(keeps)]
    if full is not None:
        lines.append("| **full cache** | " + " | ".join(fmt(value(full), digits) for _ in keeps) + " |")
    for m in _order(r.method for r in rows):
        if m == FULL:
            continue
        cells = [fmt(value(table[(m, k)]), digits) if (m, k) in table else "-" for k in keeps]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def headline(rows: list[Row], length: int) -> list[str]:
    """The all-tasks score per method x keep at one length."""
    return _pivot(rows, length, lambda r: 100 * r.all_tasks)


def compact(rows: list[Row], lengths: list[int]) -> list[str]:
    """The README table: per length and method, three metrics, each as keep 0.5 / 0.25 / 0.1."""
    metrics = (
        ("fidelity top-1 %", lambda r: 100 * r.fidelity.get("top1", float("nan")), 1, FIDELITY_ONLY),
        ("long-range KL (nats)", lambda r: r.kl_long, 3, FIDELITY_ONLY),
        ("retrieval %", lambda r: 100 * r.retrieval, 0, RETRIEVAL_ONLY),
    )
    keeps: list[float] = []
    lines = []
    for length in lengths:
        rs = complete(rows, length, FIDELITY_ONLY)
        keeps = sorted({r.keep for r in rs if r.method != FULL and r.keep < 1}, reverse=True)
        full = next((r for r in rs if r.method == FULL), None)
        for m in _order(r.method for r in rs):
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
    return [head, "|---:|---|---:|---:|---:|", *lines]


def _detail(rows: list[Row], length: int, tasks: list[str]) -> list[str]:
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


def _paired_sd(res: Results, metric, kind: str, engine: str = "tokensieve") -> dict[str, float]:
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


def kvpress_rows(res: Results) -> list[dict[str, Any]]:
    """kvpress cells next to their tokensieve counterparts, on the samples both ran."""
    kv = res.select(engine="kvpress", setting="agnostic")
    ts = {
        (c["task"], c["length"], c["sample"], c["method"], c["keep"]): c
        for c in res.select(engine="tokensieve", setting="agnostic")
    }
    prefill = {(s["task"], s["length"], s["sample"]): s for s in res.samples if s["engine"] == "tokensieve"}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in kv:
        groups[(c["length"], c["method"], c["keep"])].append(c)
    out = []
    for (length, method, keep), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        name = method.split(":", 1)[1] if ":" in method else method
        press = PRESSES.get(name)
        row: dict[str, Any] = {"length": length, "press": method, "keep": keep, "n": len(cs)}
        row["kvpress"] = mean(c["score"] for c in cs)
        row["kvpress_wall"] = mean(c["wall_seconds"] for c in cs)
        row["kv_mib"] = mean(c["kv_bytes"] for c in cs) / 2**20
        fid = [c for c in cs if c["kind"] == "fidelity"]
        row["kvpress_kl"] = mean(c["metrics"]["kl"] for c in fid) if fid else float("nan")
        for role, spec in (
            ("matched", press.matched if press else FULL),
            ("nominal", press.nominal if press else None),
        ):
            if method == FULL:
                spec = FULL
            if not spec:
                row[role] = None
                continue
            pairs = [(c, ts.get((c["task"], c["length"], c["sample"], spec, c["keep"]))) for c in cs]
            pairs = [(a, b) for a, b in pairs if b is not None]
            row[role] = spec
            row[f"{role}_n"] = len(pairs)
            row[f"{role}_score"] = mean(b["score"] for _, b in pairs)
            row[f"{role}_kvpress_score"] = mean(a["score"] for a, _ in pairs)
            row[f"{role}_same_answer"] = mean(
                float(a.get("answers") == b.get("answers")) for a, b in pairs if a["kind"] == "retrieval"
            )
            diffs = [
                max(
                    abs(x - y)
                    for x, y in zip(a["metrics"]["target_logprobs"], b["metrics"]["target_logprobs"], strict=True)
                )
                for a, b in pairs
                if a["kind"] == "fidelity" and "target_logprobs" in b.get("metrics", {})
            ]
            row[f"{role}_max_dlogp"] = max(diffs) if diffs else float("nan")
            fid_pairs = [(a, b) for a, b in pairs if a["kind"] == "fidelity"]
            row[f"{role}_kl"] = mean(b["metrics"]["kl"] for _, b in fid_pairs) if fid_pairs else float("nan")
            # tokensieve's cost of this cell inside the sweep: its share of the prefill + compress + eval
            costs = []
            for a, _b in pairs:
                s = prefill.get((a["task"], a["length"], a["sample"]))
                if s:
                    costs.append(s["wall_seconds"] / max(1, s["cells"]))
            row[f"{role}_sweep_wall"] = mean(costs)
        row["note"] = press.note if press else "the full cache in each engine"
        out.append(row)
    return out


def write_summary(out: Path, command: str | None = None) -> Path:
    res = Results.load(out / "results.jsonl")
    meta = res.meta[-1] if res.meta else {}
    rows = aggregate(res)
    lengths = sorted({r.length for r in rows})
    tasks = sorted({c["task"] for c in res.cells if c["engine"] == "tokensieve"}, key=lambda t: (t != "fidelity", t))
    lines = [f"# tokensieve bench: {meta.get('model', '?')}", ""]
    cmds = sorted({m.get("command") for m in res.meta if m.get("command")})
    if command or cmds:
        lines += ["Produced by (resumable; every invocation that added cells is listed):", ""]
        lines += [f"    {c}" for c in ([command] if command else cmds)]
        lines.append("")
    if meta:
        lines += [
            f"torch {meta.get('torch')}, transformers {meta.get('transformers')}, Python {meta.get('python')}, "
            f"{meta.get('threads')} thread(s), corpus {meta.get('corpus')}.",
            "",
        ]
    lines += [
        "Every context is compressed **before** its question is seen (query-agnostic, kvpress's default): the",
        "question and the answer prefix are appended to the compressed cache. Scores are percentages. `all` is",
        "the mean over tasks of each task's score (fidelity's score is its top-1 agreement with the full cache);",
        "`retrieval` is the mean over the retrieval tasks. KV MiB is measured from the cache tensors' storages.",
        "",
    ]
    lines += [
        "## Headline",
        "",
        "Fidelity top-1: how often the compressed cache predicts the same next token as the full cache along the",
        "true continuation. Long-range KL: KL(full ‖ compressed) on the continuation tokens that need more than",
        "the last 128 tokens. Retrieval: the mean score of the RULER-style tasks (question unseen).",
        "",
        *compact(rows, lengths),
        "",
    ]
    for length in lengths:
        n = max((max(r.n.values()) for r in rows if r.length == length), default=0)
        lines += [f"## {length} tokens: all-tasks score (up to {n} samples per task)", ""]
        lines += [*headline(rows, length), ""]
        lines += [f"### {length} tokens: fidelity, top-1 agreement with the full cache %", ""]
        lines += [*_pivot(rows, length, lambda r: 100 * r.fidelity.get("top1", float("nan")), 1, FIDELITY_ONLY), ""]
        lines += [f"### {length} tokens: fidelity, KL(full ‖ compressed) nats/token (lower is better)", ""]
        lines += [*_pivot(rows, length, lambda r: r.fidelity.get("kl", float("nan")), 3, FIDELITY_ONLY), ""]
        lines += [
            f"### {length} tokens: fidelity on long-range tokens, KL nats/token (lower is better)",
            "",
            "Only the continuation tokens that the full context predicts at least 1 nat better than its last 128",
            "tokens alone (about a fifth of them): where a cache must have kept something from further back.",
            "",
        ]
        lines += [*_pivot(rows, length, lambda r: r.kl_long, 3, FIDELITY_ONLY), ""]
        lines += [f"### {length} tokens: retrieval tasks, mean score %", ""]
        lines += [*_pivot(rows, length, lambda r: 100 * r.retrieval, 0, RETRIEVAL_ONLY), ""]
    lines += ["## Every cell", ""]
    for length in lengths:
        lines += [f"### {length} tokens", "", *_detail(rows, length, tasks), ""]
    aware = aggregate(res, setting="aware")
    if aware:
        lines += [
            "## Query-aware (labelled: the question is inside the compressed prompt)",
            "",
            "The prompt up to the question's last token is prefilled and compressed, then generation starts from",
            "that token: SnapKV's original setting. Not comparable with kvpress's default or with the tables above.",
            "",
        ]
        for length in sorted({r.length for r in aware}):
            lines += [f"### {length} tokens: retrieval score %", ""]
            lines += [*_pivot(aware, length, lambda r: 100 * r.retrieval), ""]
    notes = out / "notes.md"
    if notes.exists():  # the run's own commentary (planning, caveats), kept across --report-only rewrites
        lines += [notes.read_text().rstrip(), ""]
    lines += _sparse_section(res)
    kvp = kvpress_rows(res)
    if kvp:
        lines += _kvpress_section(kvp, res)
    lines += _cost_section(res, rows)
    lines += _samples_section(res, rows)
    text = "\n".join(lines) + "\n"
    path = out / "summary.md"
    path.write_text(text)
    return path


def _sparse_section(res: Results) -> list[str]:
    """Sparse-decoding cells: they hold the whole cache; what they save is what each decode step reads."""
    cells = [c for c in res.cells if c.get("read") and c["read"].get("sparse_steps")]
    if not cells:
        return []
    by: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        by[(c["length"], c.get("setting", "agnostic"), c["method"], c["keep"], _kind(c["task"]))].append(c)
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


def _kvpress_section(kvp: list[dict[str, Any]], res: Results) -> list[str]:
    versions = sorted({json.dumps(m.get("kvpress_versions")) for m in res.meta if m.get("kvpress_versions")})
    lines = [
        "## tokensieve vs kvpress on the same samples",
        "",
        "kvpress runs in its own environment (kvpress 0.5.5 pins transformers<5.3; see",
        f"`tokensieve/measure/bench/kvpress_bridge.py`){' ' + ', '.join(versions) if versions else ''}, through its "
        "own "
        "pipeline (retrieval) or its press hooks",
        "exactly as that pipeline applies them (fidelity), on the same contexts, questions and keep ratios.",
        "`matched` is the tokensieve spec configured to compute the same thing; `nominal` the tokensieve method",
        "at its defaults. Scores are on the samples both engines ran. `max |Δlog p|` is the largest difference",
        "in the log-probability of a true continuation token between the two engines over those fidelity cells;",
        "`same answers` the fraction of retrieval cells with identical answers. Wall seconds per cell: kvpress",
        "runs one prefill per cell; tokensieve's figure is the sample's sweep wall time divided by its cells.",
        "",
        "| length | press | keep | n | kvpress % | matched spec | matched % | same answers | max \\|Δlog p\\| | "
        "nominal | nominal % | KL kvpress | KL matched | kvpress s/cell | tokensieve s/cell | speed-up |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in kvp:
        ts_wall = r.get("matched_sweep_wall", r.get("nominal_sweep_wall", float("nan")))
        lines.append(
            f"| {r['length']} | {r['press']} | {r['keep']:g} | {r['n']} | {fmt(100 * r['kvpress'])} | "
            f"{r['matched'] or '-'} | {fmt(100 * r.get('matched_score', float('nan')))} | "
            f"{fmt(100 * r.get('matched_same_answer', float('nan')), 0)} | "
            f"{fmt(r.get('matched_max_dlogp', float('nan')), 4)} | {r['nominal'] or '-'} | "
            f"{fmt(100 * r.get('nominal_score', float('nan')))} | {fmt(r['kvpress_kl'], 3)} | "
            f"{fmt(r.get('matched_kl', float('nan')), 3)} | {fmt(r['kvpress_wall'], 2)} | {fmt(ts_wall, 2)} | "
            f"{fmt(r['kvpress_wall'] / ts_wall if ts_wall else float('nan'), 1)}x |"
        )
    # the wall-time ratio over every compressed kvpress cell, against tokensieve's sweep on the same samples
    per_sample = {
        (x["task"], x["length"], x["sample"]): x["wall_seconds"] / max(1, x["cells"])
        for ss in sweep_samples(res).values()
        for x in ss
    }
    for smp in res.samples:  # samples whose main sweep ran together with the kvpress comparison
        if smp["engine"] == "tokensieve" and smp["setting"] == "agnostic":
            per_sample.setdefault((smp["task"], smp["length"], smp["sample"]), smp["wall_seconds"] / smp["cells"])
    lines += ["", "| length | kvpress cells | kvpress s/cell | tokensieve sweep s/cell, same samples | ratio |"]
    lines.append("|---:|---:|---:|---:|---:|")
    for length in sorted({c["length"] for c in res.select(engine="kvpress")}):
        kv = [c for c in res.select(engine="kvpress", length=length) if c["method"] != FULL]
        mine = [per_sample[k] for k in {(c["task"], c["length"], c["sample"]) for c in kv} if k in per_sample]
        a, b = mean(c["wall_seconds"] for c in kv), mean(mine)
        lines.append(f"| {length} | {len(kv)} | {fmt(a, 2)} | {fmt(b, 2)} | **{fmt(a / b, 1)}x** |")
    if res.errors:
        lines += ["", "Cells that failed (recorded with their error, scored nowhere):", ""]
        by: dict[tuple, list[dict]] = defaultdict(list)
        for e in res.errors:
            by[(e["engine"], e["method"], e["keep"], e["error"].split(":")[0])].append(e)
        for (engine, method, keep, _kind), es in sorted(by.items()):
            lengths = ", ".join(str(x) for x in sorted({e["length"] for e in es}))
            lines.append(f"- {engine} `{method}` keep {keep:g} ({len(es)} cells, length {lengths}): `{es[0]['error']}`")
    lines += ["", "Where definitions differ:", ""]
    for p in PRESSES.values():
        lines.append(f"- `kvpress:{p.name}` ({p.cls}): {p.note}.")
    lines.append("")
    return lines


def _kind(task: str) -> str:
    return "fidelity" if task.split(":")[0] == "fidelity" else "retrieval"


def sweep_samples(res: Results) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Per (length, task kind): the tokensieve sample records of the main sweep, i.e. with the most common
    cell count (a later top-up run of a few specs on some samples is left out of costs)."""
    by: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for smp in res.samples:
        if smp["engine"] == "tokensieve" and smp["setting"] == "agnostic":
            by[(smp["length"], _kind(smp["task"]))].append(smp)
    for key, ss in by.items():
        mode = Counter(x["cells"] for x in ss).most_common(1)[0][0]
        by[key] = [x for x in ss if x["cells"] == mode]
    return by


def _cost_section(res: Results, rows: list[Row]) -> list[str]:
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


def _samples_section(res: Results, rows: list[Row]) -> list[str]:
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
        "95% once `1.96 * sd / sqrt(n) <= 0.05`, i.e. `n >= (1.96 * sd / 0.05)^2`. `sd` is measured in this run",
        "(median over every pair of methods at the same length and keep); the cost is this run's sweep time per",
        "sample (every method and keep), one thread on a shared machine.",
        "",
        "| metric | sd of paired differences | samples needed | samples per length here | sweep s/sample (1k / 2k) |"
        " one-core hours for the needed samples (1k + 2k) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    any_row = False
    for name, kind, metric in metrics:
        sd = _paired_sd(res, metric, kind).get(kind)
        if sd is None:
            continue
        any_row = True
        need = math.ceil((1.96 * sd / 0.05) ** 2)
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
