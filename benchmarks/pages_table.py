"""Quality cost of page granularity against token granularity, paired on the same bench samples.

For every (length, keep, method) the page specs (``<id>:pages=P...``) are compared with the token spec
``<id>`` on the same samples: fidelity top-1 % (mean over samples), its paired difference with a 95%
interval over samples (normal approximation; n = samples, so small n gives wide, indicative intervals),
and the paired difference in NLL of the true continuation per token (95% interval with tokens as units).

    .venv/bin/python benchmarks/pages_table.py benchmarks/results/bench_pages/results.jsonl \
        > benchmarks/results/bench_pages/pages_vs_tokens.md
"""

from __future__ import annotations

import json
import math
import statistics as st
import sys
from pathlib import Path


def ci(xs: list[float]) -> float:
    return 1.96 * st.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def main(path: str) -> None:
    cells = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.startswith('{"type": "cell"')]
    by = {(c["method"], c["keep"], c["length"], c["sample"]): c for c in cells if c.get("kind") == "fidelity"}
    specs = sorted({m for m, *_ in by if ":pages=" in m})
    print("# Page granularity vs token granularity (fidelity, paired on the same samples)\n")
    print(f"From `{path}`; command: `.venv/bin/python benchmarks/pages_table.py {path}`.\n")
    print("`top-1` = agreement with the full cache's next token along the true continuation (%); `d top-1` =")
    print("page spec minus its token spec on the same samples (95% interval over samples); `d NLL` = the")
    print("same for the true continuation's per-token NLL (nats, 95% interval with tokens as units);")
    print("`KiB` = mean kv_bytes as the engine counts them (pages x page bytes) vs the token spec's tensor bytes.\n")
    print("| tokens | keep | spec | n | top-1 token | top-1 pages | d top-1 | d NLL / token | KiB token | KiB pages |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for length in sorted({k[2] for k in by}):
        for keep in sorted({k[1] for k in by}, reverse=True):
            for spec in specs:
                base = spec.split(":pages=")[0]
                pairs = [
                    (by[(base, keep, length, s)], by[(spec, keep, length, s)])
                    for (m, k, n, s) in by
                    if m == spec and k == keep and n == length and (base, keep, length, s) in by
                ]
                if not pairs:
                    continue
                d1 = [100 * (p["score"] - t["score"]) for t, p in pairs]
                dn = [
                    -(a - b)
                    for t, p in pairs
                    for a, b in zip(p["metrics"]["target_logprobs"], t["metrics"]["target_logprobs"], strict=True)
                ]
                t1 = st.mean(100 * t["score"] for t, _ in pairs)
                p1 = st.mean(100 * p["score"] for _, p in pairs)
                kt = st.mean(t["kv_bytes"] for t, _ in pairs) / 1024
                kp = st.mean(p["kv_bytes"] for _, p in pairs) / 1024
                print(
                    f"| {length} | {keep} | {spec} | {len(pairs)} | {t1:.1f} | {p1:.1f} | "
                    f"{st.mean(d1):+.1f} ± {ci(d1):.1f} | {st.mean(dn):+.3f} ± {ci(dn):.3f} | {kt:.0f} | {kp:.0f} |"
                )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/bench_pages/results.jsonl")
