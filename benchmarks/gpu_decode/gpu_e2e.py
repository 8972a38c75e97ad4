"""One decode step of a random-weight model with Llama-3-8B's shapes (cut to a few layers) on a GPU:
the plain model vs tokensieve's caches, with a profile of where the time goes. Usage (GPU machine):

    PYTHONPATH=src python benchmarks/gpu_decode/gpu_e2e.py --out $OUT/gpu_e2e
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tokensieve.compat import with_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_rows, write_table


def main() -> None:
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    import tokensieve as ts
    from tokensieve.kv import CompressibleCache, SparseCache

    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--contexts", default="8192,32768")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--out", default="gpu_e2e")
    args = p.parse_args()
    dev = torch.device("cuda")
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=65536)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(dev):
        plain = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    plain.set_attn_implementation("sdpa")
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.load_state_dict(plain.state_dict())
    ts.prepare(model)
    rows = []
    for batch in [int(x) for x in args.batches.split(",")]:
        for ctx in [int(x) for x in args.contexts.split(",")]:
            prompt = torch.randint(3, 32000, (batch, ctx), device=dev)
            step = torch.randint(3, 32000, (batch, 1), device=dev)
            variants = {
                "plain model, DynamicCache": (plain, lambda: DynamicCache(config=plain.config)),
                "tokensieve attention, DynamicCache": (model, lambda: DynamicCache(config=model.config)),
                "SieveCache (dense)": (model, lambda: CompressibleCache(model)),
                "SparseCache quest read=1 (dense path)": (model, lambda: SparseCache(model, "quest", read=1.0)),
                "SparseCache quest 1/8": (model, lambda: SparseCache(model, "quest", read=0.125)),
                "SparseCache quest 1/16": (model, lambda: SparseCache(model, "quest", read=0.0625)),
            }
            ref_logits = None
            for name, (m, make) in variants.items():
                cache = make()
                with torch.inference_mode():
                    m(prompt, **with_cache(m, cache), logits_to_keep=1)
                    times, logits = [], None
                    for i in range(25):
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        out = m(step, **with_cache(m, cache)).logits
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - t0)
                        if i == 0:
                            logits = out.float()
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        m(step, **with_cache(m, cache))
                        torch.cuda.synchronize()
                top = sorted(
                    ((e.key, e.device_time_total) for e in prof.key_averages()), key=lambda kv: -kv[1]
                )[:4]  # fmt: skip
                if ref_logits is None:
                    ref_logits = logits
                ms = 1e3 * sorted(times[5:])[len(times[5:]) // 2]
                row = {
                    "batch": batch, "context": ctx, "cache": name, "step_ms": ms,
                    "logits_rel_diff_vs_plain": float((logits - ref_logits).norm() / ref_logits.norm()),
                    "gpu_ms_in_step": sum(e.device_time_total for e in prof.key_averages()) / 1e3,
                    "top_kernels_us": [(k[:60], round(t, 1)) for k, t in top],
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                del cache
                torch.cuda.empty_cache()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out.with_suffix(".jsonl"), rows)
    lines = [
        f"# One decode step, random-weight Llama-3-8B shapes cut to {args.layers} layers, bf16, "
        f"{torch.cuda.get_device_name()}",
        "",
        f"Command: `PYTHONPATH=src python benchmarks/gpu_decode/gpu_e2e.py --layers {args.layers} "
        f"--contexts {args.contexts} "
        f"--batches {args.batches} --out <dir>/gpu_e2e`",
        "",
        "Median wall time of one synchronised decode step over 20 (after 5 warm-ups), eager PyTorch; `GPU ms` =",
        "kernel time inside one profiled step; `logits diff` = relative difference of the first step's logits",
        "from the plain model's.",
        "",
        "| batch | context | cache | step ms | GPU ms | logits diff |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['cache']} | {r['step_ms']:.2f} | {r['gpu_ms_in_step']:.2f} | "
            f"{r['logits_rel_diff_vs_plain']:.2e} |"
        )
    write_table(out.with_suffix(".md"), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
