"""Serving simulator on measured quality: how many requests share a fixed page pool, with and without
page-granular compression, and what each request's answers cost in quality (from bench cells).

The pool is sized in pages of ``--page`` tokens per layer; the page bytes are measured (the bench's full
cache bytes per context token, from the tensors). Quality per request = the bench cell of its policy at
the nearest measured context length (fidelity top-1 agreement with the full cache, mean and 95% interval
over the bench samples).

    .venv/bin/python benchmarks/serving_sim/serving_sim.py --bench benchmarks/kv_pages/results/results.jsonl \
        --out benchmarks/serving_sim/results/smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import command, md_table, write_results


def main() -> None:
    from transformers import AutoConfig

    from tokensieve.runtime.models import resolve
    from tokensieve.serving import Policy, QualityTable, poisson_requests, simulate

    p = argparse.ArgumentParser()
    p.add_argument("--bench", default="benchmarks/kv_pages/results/results.jsonl")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--methods", default="snapkv:pages=16,h2o:pages=16")
    p.add_argument("--keeps", default="0.5,0.25,0.1")
    p.add_argument("--page", type=int, default=16)
    p.add_argument("--pool-requests", type=int, default=8, help="pool = this many full 2048-token prompts")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.3, help="arrivals per decode step")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/serving_sim/results/smollm2")
    a = p.parse_args()
    cmd = command("serving_sim/serving_sim.py", a)
    layers = AutoConfig.from_pretrained(resolve(a.model)).num_hidden_layers
    cells = [json.loads(ln) for ln in Path(a.bench).read_text().splitlines() if ln.startswith('{"type": "cell"')]
    full = [c for c in cells if c["method"] == "full" and c["context_tokens"]]
    per_token = sum(c["kv_bytes_full"] / c["context_tokens"] for c in full) / len(full)  # all layers, measured
    page_bytes = a.page * per_token / layers  # one page of one layer
    pool = a.pool_requests * layers * -(-2048 // a.page)
    quality = QualityTable.from_bench(a.bench)
    reqs = poisson_requests(a.requests, a.rate, [1024, 2048], (32, 256), a.seed)
    policies = [Policy("full", None, a.page)]
    for m in a.methods.split(","):
        for k in (float(x) for x in a.keeps.split(",")):
            for peak in ("all", "layer"):
                policies.append(Policy(m, k, a.page, peak))
    rows = []
    for pol in policies:
        out = simulate(reqs, pol, pool, layers, a.steps)
        q = [quality.lookup(pol.name, pol.keep, r.context) for r, _, _ in out.finished]
        row = {
            "policy": pol.name,
            "keep": pol.keep,
            "prefill_peak": pol.prefill_peak if pol.keep is not None else "-",
            "mean_running": round(out.mean_running, 2),
            "max_running": out.max_running,
            "finished": len(out.finished),
            "tokens_per_step": round(out.tokens / a.steps, 3),
            "mean_wait_steps": round(out.mean_wait, 1),
            "pages_freed": out.pages_freed,
            "mib_freed": round(out.pages_freed * page_bytes / 2**20, 1),
            "max_pages_in_use": max(r.top for r in out.trace),
            "quality": round(sum(x[0] for x in q) / max(1, len(q)), 4),
            "quality_ci": [round(min((x[1] for x in q), default=0), 4), round(max((x[1] for x in q), default=0), 4)],
            "quality_samples": sorted({x[2] for x in q}),
            "pool_pages": pool,
            "page_bytes": round(page_bytes),
            "command": cmd,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        f"# Serving simulator: {a.model}, pages of {a.page} tokens",
        "",
        f"Command: `{cmd}`",
        "",
        f"Pool: {pool} pages ({a.pool_requests} full 2048-token prompts over {layers} layers; one page of one layer =",
        f"{page_bytes / 1024:.1f} KiB, measured), {a.requests} requests (Poisson, {a.rate} per step; context 1024 or",
        f"2048 tokens; 32-256 output tokens), {a.steps} decode steps, FCFS, no preemption. `prefill peak` = what",
        "the prompt holds before compression (`all`: the whole prompt, an engine hook after the context step;",
        "`layer`: one full layer at a time, tokensieve's layer-by-layer compression). Quality = the bench cell",
        "of the policy at the request's length (fidelity top-1 % vs the full cache), mean over finished requests;",
        "`95% half-width` = the range of the cells' intervals; `n` = bench samples per cell.",
        "",
        *table(rows),
    ]
    write_results(Path(a.out), rows, lines)


def table(rows: list[dict]) -> list[str]:
    """The simulator's rows as a Markdown table (each row names its pool)."""
    head = ["policy", "keep", "prefill peak", "mean running", "max running", "finished", "tokens/step", "mean wait",
            "MiB freed", "max pages used / pool", "quality %", "95% half-width", "n"]  # fmt: skip

    def cells(r: dict) -> list:
        ci = "-" if r["keep"] is None else f"{100 * r['quality_ci'][0]:.1f}-{100 * r['quality_ci'][1]:.1f}"
        used = f"{r['max_pages_in_use']} / {r['pool_pages']}"
        return [r["policy"], r["keep"] or 1.0, r["prefill_peak"], r["mean_running"], r["max_running"], r["finished"],
                r["tokens_per_step"], r["mean_wait_steps"], r["mib_freed"], used, f"{100 * r['quality']:.1f}", ci,
                ",".join(map(str, r["quality_samples"])) or "-"]  # fmt: skip

    return md_table(head, map(cells, rows), align="lrlrrrrrrrrrr")


if __name__ == "__main__":
    main()
