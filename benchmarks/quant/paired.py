"""The paired differences of benchmarks/quant/results/README.md (and the figures docs/quantize.md quotes from
them), recomputed from the JSONL rows: for two configurations calibrated with the same seeds and evaluated on the
same windows, the per-seed difference in KL, its mean and Student-t 95% interval over seeds
(``tokensieve.stats.t_interval``: seeds are the independent runs). No model runs.

    .venv/bin/python benchmarks/quant/paired.py
"""

from __future__ import annotations

import json
from pathlib import Path

from tokensieve.stats import t_interval

RESULTS = Path(__file__).resolve().parent / "results"
# (model file, label, bits, group, a, b): the difference a - b
PAIRS = (
    ("smollm2", "SmolLM2 3:64", 3, 64, "gptq+rot@inputs", "gptq+rot@stream"),
    ("smollm2", "SmolLM2 3:64", 3, 64, "rsq@inputs", "gptq+rot@inputs"),
    ("smollm2", "SmolLM2 3:64", 3, 64, "attncon", "gptq"),
    ("smollm2", "SmolLM2 4:row", 4, 0, "rsq@inputs", "gptq+rot@inputs"),
    ("gemma3-270m", "Gemma-3 3:64", 3, 64, "gptq+rot@inputs", "gptq"),
    ("gemma3-270m", "Gemma-3 3:64", 3, 64, "rsq@inputs", "gptq+rot@inputs"),
    ("gemma3-270m", "Gemma-3 3:64", 3, 64, "attncon", "gptq"),
)


def table() -> list[str]:
    out = ["| model, config | difference | seeds | essays KL | docs KL |", "|---|---|---|---|---|"]
    for model, label, bits, group, a, b in PAIRS:
        rows = [json.loads(x) for x in (RESULTS / f"{model}.jsonl").read_text().splitlines() if x.strip()]
        by = {(r["variant"], r["seed"]): r for r in rows if r["bits"] == bits and r["group"] == group}
        seeds = sorted({s for v, s in by if v == a} & {s for v, s in by if v == b})
        cells = []
        for key in ("kl", "kl_docs"):
            iv = t_interval([by[(a, s)][key] - by[(b, s)][key] for s in seeds])
            cells.append(f"{iv.estimate:+.3f} ± {iv.half:.3f}" if iv.n > 1 else f"{iv.estimate:+.3f} (one seed)")
        out.append(f"| {label} | {a} - {b} | {len(seeds)} | {cells[0]} | {cells[1]} |")
    return out


if __name__ == "__main__":
    print("\n".join(table()))
