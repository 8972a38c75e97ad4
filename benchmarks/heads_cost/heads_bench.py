"""KV bytes held, peak RSS (compression and decode) and decode speed for the head-adaptive, mixed-precision,
retrieval-head, merging and modifier methods, against the full cache.

Each row runs in a fresh process so that its peak RSS is its own. ``plain`` is the model on transformers'
SDPA with a DynamicCache (the baseline to beat); ``full`` is tokensieve's cache with nothing evicted.
Decode speed is measured over the decode steps only (a stopping criterion time-stamps every step; the
question's own prefill is excluded), greedy, ``--new-tokens`` forced new tokens.

    .venv/bin/python benchmarks/heads_cost/heads_bench.py --tokens 2048 --keep 0.25 \
        --out benchmarks/heads_cost/results/heads_bench

``--random-weights`` builds the same architecture with random weights (speed and bytes do not depend on the
weights; for machines without the converted model).
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


def rows(keep: float) -> list[tuple[str, str, dict]]:
    """(label, method, parameters). Mixed precision at keep=0.25 holds 0.32 (INT2) of the bytes; the
    ``25% bytes`` row picks the full-precision fraction that holds 0.25."""
    return [
        (PLAIN, PLAIN, {}),
        ("full", "streaming", dict(keep=1.0)),  # observes nothing: tokensieve's cache, nothing evicted
        ("snapkv", "snapkv", dict(keep=keep)),
        ("snapkv + adakv", "snapkv", dict(keep=keep, allocator="adakv")),
        ("snapkv + zipvl", "snapkv", dict(keep=keep, allocator="zipvl")),
        ("h2o + adakv", "h2o", dict(keep=keep, allocator="adakv")),
        ("ems (merge)", "ems", dict(keep=keep)),
        ("razor", "razor", dict(keep=keep)),
        ("compresskv + allocator", "compresskv", dict(keep=keep, allocator="compresskv")),
        ("mikv (fp32 + INT2)", "mikv", dict(keep=keep, importance="snapkv")),
        ("mikv at 25% bytes", "mikv", dict(keep=0.1724, importance="snapkv")),
        ("zipcache_quant (4/2 bit)", "zipcache_quant", dict(keep=keep)),
        ("act", "act", dict(keep=1.0)),
        ("zerotuning", "zerotuning", dict(keep=1.0)),
    ]


def cell(args: argparse.Namespace, label: str, method: str, params: dict) -> dict:
    import gc

    import torch
    from transformers import DynamicCache, StoppingCriteria

    import tokensieve as ts
    from tokensieve.core.ops.memory import track_peak_rss

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(args.config)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()
        tok = None
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, config.vocab_size, (1, args.tokens), generator=g)
        question = torch.randint(100, config.vocab_size, (1, 24), generator=g)
        if method != PLAIN:
            ts.prepare(model)
    else:
        from tokensieve.runtime.passkey import passkey_context

        model, tok = ts.load_model(args.model, prepare=method != PLAIN)
        fmt = ts.PromptFormat(tok)
        task = passkey_context(tok, args.tokens, 0.5, key="27183")
        ids = torch.tensor([fmt.context_ids(task.context)])
        question = torch.tensor([fmt.question_ids(task.question, task.answer_prefix)])
    if method != PLAIN:
        ts.get_method(method, **{k: v for k, v in params.items() if k not in ("keep", "allocator")}).bind(model)

    class Stamp(StoppingCriteria):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    gc.collect()
    out: dict = {"label": label, "method": method, "params": params, "context_tokens": ids.shape[1]}
    with track_peak_rss() as rss:
        if method == PLAIN:
            start = time.perf_counter()
            cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                model(ids, **with_cache(model, cache), logits_to_keep=1)
            out["prefill_seconds"] = time.perf_counter() - start
            full = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
            out["kv_bytes"] = out["kv_bytes_full"] = full
        else:
            c = ts.compress(model, tok, ids, method, **params)
            out.update(
                prefill_seconds=c.stats.prefill_seconds,
                compress_seconds=c.stats.compress_seconds,
                kv_bytes_full=c.stats.kv_bytes_full,
                kv_bytes=c.stats.kv_bytes,
            )
    out.update(rss_compress_start=rss.start, rss_compress_peak=rss.peak)
    gc.collect()
    stamp = Stamp()
    kw = dict(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, stopping_criteria=[stamp]
    )
    with track_peak_rss() as rss:
        if method == PLAIN:
            full_ids = torch.cat([ids, question], 1)
            with torch.inference_mode():
                model.generate(
                    input_ids=full_ids,
                    attention_mask=torch.ones_like(full_ids),
                    **with_cache(model, cache),
                    pad_token_id=0,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    **kw,
                )
        else:
            c.generate(question, **kw)
    steps = len(stamp.times) - 1
    out.update(
        rss_decode_start=rss.start,
        rss_decode_peak=rss.peak,
        decode_tokens_per_s=steps / (stamp.times[-1] - stamp.times[0]),
        threads=torch.get_num_threads(),
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--only", default=None, help="comma list of row labels")
    p.add_argument("--random-weights", action="store_true", help="the architecture of --config, random weights")
    p.add_argument(
        "--config", default="benchmarks/heads_cost/configs/smollm2", help="config.json directory (--random-weights)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/heads_cost/results/heads_bench")
    p.add_argument("--cell", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one row
    args = p.parse_args()
    table = rows(args.keep)
    if args.cell is not None:
        label, method, params = table[args.cell]
        print(json.dumps(cell(args, label, method, params)))
        return

    from tokensieve.core.ops.memory import mib

    only = None if args.only is None else set(args.only.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with open(out.with_suffix(".jsonl"), "w") as f:
        for i, (label, _, _) in enumerate(table):
            if only is not None and label not in only and label != PLAIN:
                continue
            cmd = [sys.executable, __file__, "--cell", str(i), *sys.argv[1:]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{label}: failed\n{res.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            results.append(row)
            f.write(json.dumps(stamp(row)) + "\n")
            f.flush()
            print(
                f"{label:<26} kept {row['kv_bytes'] / row['kv_bytes_full']:.3f}  "
                f"peak compress {mib(row['rss_compress_peak']):6.0f} MiB  decode {mib(row['rss_decode_peak']):6.0f} MiB"
                f"  {row['decode_tokens_per_s']:6.1f} tok/s",
                flush=True,
            )
    plain = next(r for r in results if r["label"] == PLAIN)
    cmd = " ".join(["python", "benchmarks/heads_cost/heads_bench.py", *sys.argv[1:]])
    lines = [
        f"# KV bytes, peak RSS and decode speed at keep={args.keep}, {args.tokens} tokens, "
        f"{'random weights' if args.random_weights else args.model}",
        "",
        f"Command: `{cmd}`",
        "",
        "Each row is a fresh process. `KV kept` = bytes held by the cache's storages / the full cache's (codes,",
        "scales, zero points, merge weights included). Peak RSS is the kernel's high-water mark, reset before",
        "compression (prefill + compression) and again before decoding. Decode tokens/s over the decode steps only",
        f"({args.new_tokens} forced new tokens, greedy), relative to `plain` (transformers' SDPA + DynamicCache).",
        "",
        "| method | KV full MiB | KV kept MiB | kept | peak RSS compress MiB | peak RSS decode MiB | decode tok/s | "
        "vs plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {mib(r['kv_bytes_full']):.1f} | {mib(r['kv_bytes']):.1f} | "
            f"{r['kv_bytes'] / r['kv_bytes_full']:.3f} | {mib(r['rss_compress_peak']):.0f} | "
            f"{mib(r['rss_decode_peak']):.0f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['decode_tokens_per_s'] / plain['decode_tokens_per_s']:.2f} |"
        )
    write_table(out.with_suffix(".md"), lines)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
