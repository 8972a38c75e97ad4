"""Prefill / compression time, KV bytes and peak RSS for every prefill-eviction method.

Each (method, length) cell runs in a fresh process so that its peak RSS is its own. The baseline
``plain`` is the model on transformers' SDPA with a DynamicCache: the prefill tokensieve must not
outgrow. Usage:

    .venv/bin/python benchmarks/kv_cost/core.py --lengths 2048,4096 --keep 0.25 --out benchmarks/kv_cost/results/core
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tokensieve.compat import with_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import stamp, write_table

PLAIN = "plain"


def cell(model_name: str, method: str, n_tokens: int, keep: float) -> dict:
    import gc

    import torch
    from transformers import DynamicCache

    import tokensieve as ts
    from tokensieve.core.ops.memory import track_peak_rss
    from tokensieve.runtime.passkey import passkey_context

    model, tok = ts.load_model(model_name, prepare=method != PLAIN)
    task = passkey_context(tok, n_tokens, 0.5, key="27183")
    ids = torch.tensor([ts.PromptFormat(tok).context_ids(task.context)])
    gc.collect()
    out: dict = {"model": model_name, "method": method, "keep": keep, "context_tokens": ids.shape[1]}
    with track_peak_rss() as rss:
        if method == PLAIN:
            start = time.perf_counter()
            with torch.inference_mode():
                cache = DynamicCache(config=model.config)
                model(ids, **with_cache(model, cache), logits_to_keep=1)
            out["prefill_seconds"] = time.perf_counter() - start
            out["kv_bytes"] = out["kv_bytes_full"] = sum(
                layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
                for layer in cache.layers
            )
        else:
            c = ts.compress(model, tok, ids, method, keep=keep)
            out.update(
                prefill_seconds=c.stats.prefill_seconds,
                compress_seconds=c.stats.compress_seconds,
                kv_bytes_full=c.stats.kv_bytes_full,
                kv_bytes=c.stats.kv_bytes,
            )
    out.update(rss_start=rss.start, rss_peak=rss.peak, rss_reset=rss.reset, threads=torch.get_num_threads())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--lengths", default="2048,4096")
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--methods", default=None, help="comma list; default: every method")
    p.add_argument("--out", default="benchmarks/kv_cost/results/core")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    args = p.parse_args()
    if args.cell:
        method, n = args.cell.split(":")
        print(json.dumps(cell(args.model, method, int(n), args.keep)))
        return

    import tokensieve as ts
    from tokensieve.core.ops.memory import mib

    methods = [PLAIN, *(args.methods.split(",") if args.methods else ts.method_ids())]
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".jsonl"), "w") as f:
        for n in [int(x) for x in args.lengths.split(",")]:
            for method in methods:
                cmd = [
                    sys.executable,
                    __file__,
                    "--model",
                    args.model,
                    "--keep",
                    str(args.keep),
                    "--cell",
                    f"{method}:{n}",
                ]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["target_tokens"] = n
                rows.append(row)
                f.write(json.dumps(stamp(row)) + "\n")
                f.flush()
                print(
                    f"{n:>5} {method:<13} prefill {row['prefill_seconds']:6.2f}s "
                    f"compress {row.get('compress_seconds', 0):6.3f}s peak {mib(row['rss_peak']):7.0f} MiB",
                    flush=True,
                )

    lines = [
        f"# Prefill eviction on {args.model}, keep={args.keep}",
        "",
        f"Command: `.venv/bin/python benchmarks/kv_cost/core.py --model {args.model} --lengths {args.lengths} "
        f"--keep {args.keep} --out {args.out}`",
        "",
        "`prefill s` is the forward pass (for tokensieve methods it excludes the time inside `compress s`,",
        "which is observation + scoring + eviction inside the same forward). KV bytes are measured from the",
        "cache tensors' storages; peak RSS is the kernel's high-water mark for the process, reset before the",
        "prefill. Every row is a fresh process.",
        "",
        "| tokens | method | prefill s | compress s | total s | KV full MiB | KV kept MiB | kept | peak RSS MiB | "
        "peak vs plain |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({r["target_tokens"] for r in rows}):
        group = [r for r in rows if r["target_tokens"] == n]
        plain_peak = next(r["rss_peak"] for r in group if r["method"] == PLAIN)
        for r in group:
            total = r["prefill_seconds"] + r.get("compress_seconds", 0.0)
            lines.append(
                f"| {r['context_tokens']} | {r['method']} | {r['prefill_seconds']:.2f} | "
                f"{r.get('compress_seconds', 0):.3f} | {total:.2f} | {mib(r['kv_bytes_full']):.1f} | "
                f"{mib(r['kv_bytes']):.1f} | {r['kv_bytes'] / r['kv_bytes_full']:.3f} | {mib(r['rss_peak']):.0f} | "
                f"{r['rss_peak'] / plain_peak - 1:+.1%} |"
            )
    write_table(out.with_suffix(".md"), lines)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
