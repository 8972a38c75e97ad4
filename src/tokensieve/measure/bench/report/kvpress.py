"""tokensieve next to kvpress on the samples both ran: paired rows and their section of the summary."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from tokensieve.measure.bench.methods import PRESSES
from tokensieve.measure.bench.report.results import FULL, Results, fmt, mean, sweep_samples


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
            row[role] = spec
            row.update(paired(role, [(a, b) for a, b in pairs if b is not None], prefill))
        row["note"] = press.note if press else "the full cache in each engine"
        out.append(row)
    return out


def paired(role: str, pairs: list[tuple[dict, dict]], prefill: dict[tuple, dict]) -> dict[str, Any]:
    """One role's columns (``matched`` or ``nominal``) over the (kvpress cell, tokensieve cell) pairs."""
    diffs = [
        max(abs(x - y) for x, y in zip(a["metrics"]["target_logprobs"], b["metrics"]["target_logprobs"], strict=True))
        for a, b in pairs
        if a["kind"] == "fidelity" and "target_logprobs" in b.get("metrics", {})
    ]
    fid_pairs = [(a, b) for a, b in pairs if a["kind"] == "fidelity"]
    # tokensieve's cost of this cell inside the sweep: its share of the prefill + compress + eval
    costs = []
    for a, _b in pairs:
        s = prefill.get((a["task"], a["length"], a["sample"]))
        if s:
            costs.append(s["wall_seconds"] / max(1, s["cells"]))
    return {
        f"{role}_n": len(pairs),
        f"{role}_score": mean(b["score"] for _, b in pairs),
        f"{role}_kvpress_score": mean(a["score"] for a, _ in pairs),
        f"{role}_same_answer": mean(
            float(a.get("answers") == b.get("answers")) for a, b in pairs if a["kind"] == "retrieval"
        ),
        f"{role}_max_dlogp": max(diffs) if diffs else float("nan"),
        f"{role}_kl": mean(b["metrics"]["kl"] for _, b in fid_pairs) if fid_pairs else float("nan"),
        f"{role}_sweep_wall": mean(costs),
    }


def kvpress_section(kvp: list[dict[str, Any]], res: Results) -> list[str]:
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
