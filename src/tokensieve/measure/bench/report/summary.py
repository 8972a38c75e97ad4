"""``summary.md``: the prose around the tables, in the order a reader wants them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokensieve.measure.bench.report.aggregate import FIDELITY_ONLY, RETRIEVAL_ONLY, Row, aggregate, has_part
from tokensieve.measure.bench.report.kvpress import kvpress_rows, kvpress_section
from tokensieve.measure.bench.report.results import Results
from tokensieve.measure.bench.report.sections import cost_section, samples_section, sparse_section
from tokensieve.measure.bench.report.tables import compact, detail, headline, pivot


def write_summary(out: Path, command: str | None = None) -> Path:
    res = Results.load(out / "results.jsonl")
    rows = aggregate(res)
    lengths = sorted({r.length for r in rows})
    tasks = sorted({c["task"] for c in res.cells if c["engine"] == "tokensieve"}, key=lambda t: (t != "fidelity", t))
    lines = preamble(res, command)
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
        lines += per_length(rows, length)
    lines += ["## Every cell", ""]
    for length in lengths:
        lines += [f"### {length} tokens", "", *detail(rows, length, tasks), ""]
    lines += query_aware(res)
    notes = out / "notes.md"
    if notes.exists():  # the run's own commentary (planning, caveats), kept across --report-only rewrites
        lines += [notes.read_text().rstrip(), ""]
    lines += sparse_section(res)
    kvp = kvpress_rows(res)
    if kvp:
        lines += kvpress_section(kvp, res)
    lines += cost_section(res, rows)
    lines += samples_section(res, rows)
    text = "\n".join(lines) + "\n"
    path = out / "summary.md"
    path.write_text(text)
    return path


def preamble(res: Results, command: str | None) -> list[str]:
    """The title, the commands that produced the run, its versions, and what the scores mean."""
    meta: dict[str, Any] = res.meta[-1] if res.meta else {}
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
    return [
        *lines,
        "Every context is compressed **before** its question is seen (query-agnostic, kvpress's default): the",
        "question and the answer prefix are appended to the compressed cache. Scores are percentages. `all` is",
        "the mean over tasks of each task's score (fidelity's score is its top-1 agreement with the full cache);",
        "`retrieval` is the mean over the retrieval tasks. KV MiB is measured from the cache tensors' storages.",
        "",
        *(BLOCK_NOTE if any(c["method"].startswith("block") for c in res.cells) else []),
    ]


# `block` cells prefill the context themselves (measure/bench/sweep.py, _naive_cells with plain_seconds)
BLOCK_NOTE = [
    "`block:...` cells prefill the same context themselves, block by block under the budget (the question is",
    "appended after, as for every method): their `compress ms` is that whole block-wise prefill (forwards and",
    "cuts), to be read against the sample's plain prefill seconds (`prefill_seconds` in their rows).",
    "",
]


def per_length(rows: list[Row], length: int) -> list[str]:
    """One length's pivots: all tasks, fidelity top-1, KL, long-range KL, retrieval."""
    n = max((max(r.n.values()) for r in rows if r.length == length), default=0)
    lines = [f"## {length} tokens: all-tasks score (up to {n} samples per task)", ""]
    lines += [*headline(rows, length), ""]
    if has_part(rows, FIDELITY_ONLY):
        lines += fidelity_pivots(rows, length)
    if not has_part(rows, RETRIEVAL_ONLY):
        return lines
    lines += [f"### {length} tokens: retrieval tasks, mean score %", ""]
    return [*lines, *pivot(rows, length, lambda r: 100 * r.retrieval, 0, RETRIEVAL_ONLY), ""]


def fidelity_pivots(rows: list[Row], length: int) -> list[str]:
    """One length's fidelity pivots: top-1 agreement, KL and long-range KL."""
    lines = [f"### {length} tokens: fidelity, top-1 agreement with the full cache %", ""]
    lines += [*pivot(rows, length, lambda r: 100 * r.fidelity.get("top1", float("nan")), 1, FIDELITY_ONLY), ""]
    lines += [f"### {length} tokens: fidelity, KL(full ‖ compressed) nats/token (lower is better)", ""]
    lines += [*pivot(rows, length, lambda r: r.fidelity.get("kl", float("nan")), 3, FIDELITY_ONLY), ""]
    lines += [
        f"### {length} tokens: fidelity on long-range tokens, KL nats/token (lower is better)",
        "",
        "Only the continuation tokens that the full context predicts at least 1 nat better than its last 128",
        "tokens alone (about a fifth of them): where a cache must have kept something from further back.",
        "",
    ]
    return [*lines, *pivot(rows, length, lambda r: r.kl_long, 3, FIDELITY_ONLY), ""]


def query_aware(res: Results) -> list[str]:
    """The labelled query-aware cells (SnapKV's original setting), when the run has any."""
    aware = aggregate(res, setting="aware")
    if not aware:
        return []
    lines = [
        "## Query-aware (labelled: the question is inside the compressed prompt)",
        "",
        "The prompt up to the question's last token is prefilled and compressed, then generation starts from",
        "that token: SnapKV's original setting. Not comparable with kvpress's default or with the tables above.",
        "",
    ]
    for length in sorted({r.length for r in aware}):
        lines += [f"### {length} tokens: retrieval score %", ""]
        lines += [*pivot(aware, length, lambda r: 100 * r.retrieval), ""]
    return lines
