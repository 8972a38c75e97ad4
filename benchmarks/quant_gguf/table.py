"""The tables of benchmarks/quant_gguf/results/README.md from the rows run.py appended (run from the repo root)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path("benchmarks/quant_gguf/results")


def table(model: str) -> list[str]:
    rows = [json.loads(x) for x in (RESULTS / f"{model}.jsonl").read_text().splitlines() if x.strip()]
    evals = {r["file"]: r for r in rows if r.get("stage") == "eval"}
    # speed rows without rss_base_mb came from a version that read getrusage's maxrss, which a child inherits
    # across exec from its (large) parent: their RSS is wrong, so they are left out and were rerun
    speeds = {(r["file"], r["threads"]): r for r in rows if r.get("stage") == "speed" and "rss_base_mb" in r}
    files = sorted({*evals, *(f for f, _ in speeds)})
    out = [f"### {model}", "",
           "| file | MB | bits/weight | KL essays | KL docs | ppl essays | ppl docs | top-1 essays "
           "| prefill tok/s 1t / 2t | decode tok/s 1t / 2t | peak RSS MB (1t) / before load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in files:
        e, s1, s2 = evals.get(f, {}), speeds.get((f, 1), {}), speeds.get((f, 2), {})

        def g(d: dict, k: str, fmt: str = "{:.3f}") -> str:
            return fmt.format(d[k]) if k in d else "-"

        mb = f"{e['bytes'] / 1e6:.1f}" if e else "-"
        out.append(f"| {f} | {mb} | {g(e, 'bpw', '{:.2f}')} | {g(e, 'kl_prose')} | {g(e, 'kl_docs')} "
                   f"| {g(e, 'ppl_prose', '{:.2f}')} | {g(e, 'ppl_docs', '{:.2f}')} | {g(e, 'top1_prose')} "
                   f"| {g(s1, 'prefill_tok_s', '{:.0f}')} / {g(s2, 'prefill_tok_s', '{:.0f}')} "
                   f"| {g(s1, 'decode_tok_s', '{:.1f}')} / {g(s2, 'decode_tok_s', '{:.1f}')} "
                   f"| {g(s1, 'rss_mb', '{:.0f}')} / {g(s1, 'rss_base_mb', '{:.0f}')} |")  # fmt: skip
    refused = [r for r in rows if "refused" in r]
    for r in refused:
        out.append(f"\n{r['file']}: refused: {r['refused']}")
    return out


if __name__ == "__main__":
    print("\n".join(line for m in sys.argv[1:] for line in [*table(m), ""]))
