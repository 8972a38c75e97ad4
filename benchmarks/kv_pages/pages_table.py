"""Quality cost of page granularity against token granularity, paired on the same bench samples.

For every (length, keep, method) the page specs (``<id>:pages=P...``) are compared with the token spec
``<id>`` on the same samples: fidelity top-1 % (mean over samples), its paired difference with a 95% paired
bootstrap interval over samples (``tokensieve.stats.paired_bootstrap``), and the paired difference in NLL of the
true continuation per token (95% interval resampling samples, the tokens of one sample together:
``clustered_bootstrap``). Intervals are printed as ± half their width.

    .venv/bin/python benchmarks/kv_pages/pages_table.py benchmarks/kv_pages/results/results.jsonl \
        > benchmarks/kv_pages/results/pages_vs_tokens.md
"""

from __future__ import annotations

import json
import statistics as st
import sys
from pathlib import Path

from tokensieve.stats import clustered_bootstrap, paired_bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import print_provenance


def main(path: str) -> None:
    cells = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.startswith('{"type": "cell"')]
    by = {(c["method"], c["keep"], c["length"], c["sample"]): c for c in cells if c.get("kind") == "fidelity"}
    specs = sorted({m for m, *_ in by if ":pages=" in m})
    print("# Page granularity vs token granularity (fidelity, paired on the same samples)\n")
    print(f"From `{path}`; command: `.venv/bin/python benchmarks/kv_pages/pages_table.py {path}`.\n")
    print("`top-1` = agreement with the full cache's next token along the true continuation (%); `d top-1` =")
    print("page spec minus its token spec on the same samples (95% interval over samples); `d NLL` = the")
    print("same for the true continuation's per-token NLL (nats, 95% interval resampling samples, a sample's")
    print("tokens together);")
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
                d1 = paired_bootstrap([100 * p["score"] for _, p in pairs], [100 * t["score"] for t, _ in pairs])
                dn, owner = [], []
                for i, (t, p) in enumerate(pairs):
                    for a, b in zip(p["metrics"]["target_logprobs"], t["metrics"]["target_logprobs"], strict=True):
                        dn.append(-(a - b))
                        owner.append(i)
                dnl = clustered_bootstrap(dn, owner)
                t1 = st.mean(100 * t["score"] for t, _ in pairs)
                p1 = st.mean(100 * p["score"] for _, p in pairs)
                kt = st.mean(t["kv_bytes"] for t, _ in pairs) / 1024
                kp = st.mean(p["kv_bytes"] for _, p in pairs) / 1024
                print(
                    f"| {length} | {keep} | {spec} | {len(pairs)} | {t1:.1f} | {p1:.1f} | "
                    f"{d1.estimate:+.1f} ± {d1.half:.1f} | {dnl.estimate:+.3f} ± {dnl.half:.3f} | {kt:.0f} | {kp:.0f} |"
                )
    print_provenance()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/kv_pages/results/results.jsonl")
