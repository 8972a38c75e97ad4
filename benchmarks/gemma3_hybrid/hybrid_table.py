"""The Gemma-3 question-unseen table: per task kind (retrieval, fidelity), length, method and keep, the share of the
full cache's score (paired 95% bootstrap over samples; retrieval also the share answered right with its Wilson
interval, fidelity the KL), the bytes held (share of the full cache's, measured) and how they split between
sliding-window and full-attention layers.

    .venv/bin/python benchmarks/gemma3_hybrid/hybrid_table.py benchmarks/gemma3_hybrid/results/gemma3_unseen_1024 \
        benchmarks/gemma3_hybrid/results/gemma3_unseen_2048 benchmarks/gemma3_hybrid/results/gemma3_fidelity \
        --out benchmarks/gemma3_hybrid/results/gemma3_hybrid/unseen
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_results

from tokensieve.stats import paired_bootstrap, wilson

KINDS = {
    "retrieval": "score as a share of the full cache's (paired 95% bootstrap over samples), answers right (Wilson 95%)",
    "fidelity": "top-1 agreement with the full cache's next token, as a share of the full cache's (paired 95% "
    "bootstrap); KL to the full cache (mean, nats)",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cells: dict[tuple, list[dict]] = defaultdict(list)
    metas = []
    for d in args.dirs:
        for line in (Path(d) / "results.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("type") == "meta":
                metas.append(r)
            elif r.get("type") == "cell" and r.get("engine") == "tokensieve" and "score" in r:
                cells[(r["kind"], r["length"], r["method"], r["keep"])].append(r)
    full = {(r["length"], r["task"], r["sample"]): r["score"] for k, rs in cells.items() if k[2] == "full" for r in rs}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    commands = sorted({m["command"] for m in metas})
    lines = [
        "# Gemma-3 270M, question unseen: score and bytes as shares of the full cache's",
        "",
        f"Table commit {commit}. Runs: " + "; ".join(f"`{c}`" for c in commands)
        + f" (torch {metas[-1]['torch']}, transformers {metas[-1]['transformers']}).",
        "Machine: shared 2-core CPU, 1 thread. Retrieval: niah_single:haystack=prose and niah_multikey, samples "
        "pooled; fidelity: the bench's `fidelity` task. Bytes held and the sliding layers' share of them: measured.",
    ]  # fmt: skip
    rows = []
    for kind, what in KINDS.items():
        order = sorted((k for k in cells if k[0] == kind), key=lambda k: (k[1], k[2], -k[3]))
        if not order:
            continue
        extra = "right (Wilson 95%)" if kind == "retrieval" else "KL"
        head = f"| length | method | keep | n | full cache | score / full | {extra} | bytes held | of which sliding |"
        lines += ["", f"## {kind}: {what}", "", head, "|---|---|---|---|---|---|---|---|---|"]
        for key in order:
            _, length, method, keep = key
            done = [r for r in cells[key] if (r["length"], r["task"], r["sample"]) in full]
            if method == "full" or not done:
                continue
            pairs = [(r["score"], full[(r["length"], r["task"], r["sample"])]) for r in done]
            base = sum(f for _, f in pairs) / len(pairs)
            iv = paired_bootstrap([sc for sc, _ in pairs], [f for _, f in pairs], ratio=True)  # share of the full
            mean = sum(sc for sc, _ in pairs) / len(pairs) / base if base else 0.0
            held = sum(r["kv_bytes"] / r["kv_bytes_full"] for r in done) / len(done)
            sliding = sum(r.get("kv_bytes_sliding", 0) / r["kv_bytes"] for r in done) / len(done)
            row = {"kind": kind, "length": length, "method": method, "keep": keep, "n": len(done), "full": base,
                   "share": mean, "lo": iv.lo, "hi": iv.hi, "bytes": held, "sliding_share": sliding}  # fmt: skip
            if kind == "retrieval":
                w = wilson(sum(sc for sc, _ in pairs), len(pairs))
                row.update(right=w.estimate, right_lo=w.lo, right_hi=w.hi)
                cell = f"{w.estimate:.0%} [{w.lo:.0%}, {w.hi:.0%}]"
            else:
                kl = [r["metrics"]["kl"] for r in done]
                row["kl"] = sum(kl) / len(kl)
                cell = f"{row['kl']:.3f}"
            lines.append(f"| {length} | `{method}` | {keep} | {len(done)} | {base:.2f} | {mean:.0%} "
                         f"[{iv.lo:.0%}, {iv.hi:.0%}] | {cell} | {held:.3f} | {sliding:.0%} |")  # fmt: skip
            rows.append(row)
    write_results(Path(args.out), rows, lines)


if __name__ == "__main__":
    main()
