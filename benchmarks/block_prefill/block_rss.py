"""Peak RSS and KV bytes of `block` (true chunked prefill under a budget) against a full prefill, each run in a
fresh process (VmHWM). Modes: `prefill` (the full cache kept, then compressed: kvpress's order), `compress`
(tokensieve's default: each layer compressed right after its attention; the whole context's activations exist),
`block` (blocks of --block tokens, cut back to the budget after each).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/block_prefill/block_rss.py --lengths 4096,8192 --keep 0.25 \
        --block 128 --method keydiff --out benchmarks/block_prefill/results
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py

from _common import command, write_results


def one(mode: str, length: int, keep: float, block: int, method: str) -> dict:
    import torch

    from tokensieve.core.ops.memory import current_rss, peak_rss
    from tokensieve.kv import compress, compress_blocks, prefill
    from tokensieve.runtime.corpus import prose_paragraphs
    from tokensieve.runtime.models import load_model

    model, tok = load_model("smollm2")
    text, paras, i = "", prose_paragraphs(), 0
    while len(tok.encode(text)) < length:
        text += paras[i % len(paras)] + "\n\n"
        i += 1
    ids = tok.encode(text)[: length - 8]
    context = tok.decode(ids)
    loaded = current_rss()
    with torch.no_grad():  # page the weights in (safetensors maps them lazily): "warm" is the model in memory
        model(torch.tensor([ids[:16]]))
    warm = current_rss()
    start = time.perf_counter()
    if mode == "prefill":
        pre = prefill(model, tok, context, methods=[method])
        c = pre.compress(method, keep=keep)
        held = pre.cache.kv_bytes()
    elif mode == "compress":
        c = compress(model, tok, context, method, keep=keep)
        held = 0
    else:
        c = compress_blocks(model, tok, context, method, keep=keep, block=block)
        held = 0
    seconds = time.perf_counter() - start
    s = c.stats
    return {
        "mode": mode, "length": length, "context_tokens": s.context_tokens, "method": method, "keep": keep,
        "block": block if mode == "block" else None, "rss_loaded": loaded, "rss_warm": warm, "peak_rss": peak_rss(),
        "peak_over_loaded": peak_rss() - loaded, "peak_over_warm": peak_rss() - warm,
        # the KV bytes of the most slots a layer held at once (budget + block for block; the context otherwise)
        "held_slots_bytes": s.kv_bytes_full * (s.peak_tokens_held if mode == "block" else s.context_tokens)
        / s.context_tokens, "kv_bytes": s.kv_bytes, "kv_bytes_full": s.kv_bytes_full,
        "full_cache_held": held, "peak_tokens_held": s.peak_tokens_held, "seconds": round(seconds, 2),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="4096,8192")
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--method", default="keydiff")
    p.add_argument("--modes", default="block,compress,prefill")
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per mode and length (RSS varies by run)")
    p.add_argument("--out", default="benchmarks/block_prefill/results/smollm2_keydiff")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--from-log", help="rebuild the table from the rows a cut-short run printed (one dict a line)")
    args = p.parse_args()
    if args.from_log:
        rows = [ast.literal_eval(line) for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
        return table(args, rows)
    if args.one:
        mode, length = args.one.split(":")
        print(json.dumps(one(mode, int(length), args.keep, args.block, args.method)))
        return
    one_arg = [a for a in sys.argv[1:] if not a.startswith("--one")]
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for mode, repeat in [(m, r) for m in args.modes.split(",") for r in range(args.repeats)]:
            out = subprocess.run([sys.executable, __file__, *one_arg, "--one", f"{mode}:{length}"],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "repeat": repeat})
            print(rows[-1], flush=True)
    table(args, rows)


def table(args: argparse.Namespace, rows: list[dict]) -> None:
    mib = 1 << 20
    lines = [
        f"# `block` chunked prefill vs full prefill: SmolLM2, {args.method}, keep {args.keep}, fresh process each",
        "",
        "| context | mode | peak RSS MiB | peak - loaded MiB | peak - warm MiB | KV of the most slots held MiB |"
        " peak - warm over it | KV held after MiB | full KV MiB | max slots per layer | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        slots = r["peak_tokens_held"] if r["mode"] == "block" else r["context_tokens"]
        over = f"{r['peak_over_warm'] / r['held_slots_bytes']:.2f}" if "peak_over_warm" in r else "-"
        warm = f"{r['peak_over_warm'] / mib:.0f}" if "peak_over_warm" in r else "-"
        held = f"{r['held_slots_bytes'] / mib:.1f}" if "held_slots_bytes" in r else "-"
        lines.append(
            f"| {r['context_tokens']} | {r['mode']} | {r['peak_rss'] / mib:.0f} | {r['peak_over_loaded'] / mib:.0f} |"
            f" {warm} | {held} | {over} | {r['kv_bytes'] / mib:.1f} | {r['kv_bytes_full'] / mib:.1f} | {slots} |"
            f" {r['seconds']} |"
        )
    lines += [
        "",
        "warm: RSS after a 16-token forward has paged the weights in (safetensors maps them lazily, so 'loaded' is "
        "before the weights are read). KV of the most slots held: the full cache's bytes per token times the most "
        "tokens a layer held at once (budget + block for `block`, the whole context otherwise).",
    ]
    shown = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("one", "from_log")})
    cmd = command("block_prefill/block_rss.py", shown, "OMP_NUM_THREADS=1")
    if args.from_log:
        lines += ["", f"{len(rows)} runs: the sweep was cut short at the deadline (--from-log)."]
    write_results(Path(args.out), rows, lines, cmd)


if __name__ == "__main__":
    main()
