"""Prefill pruning: time to first token vs the plain model, and pass-key quality at the same settings.

Each (length, method, schedule, depth) cell prefills a pass-key prompt (question inside, answer started by
"The pass key is") with the pruning hooks on and decodes 8 tokens; TTFT is the prompt's forward plus
the first token, measured inside ``generate``. ``plain`` is the same model with a DynamicCache (every
layer on plain SDPA).
Schedules are named ``layers@keep``; fractions of the depth and of the prompt. Speed needs a quiet
machine. Usage:

    .venv/bin/python benchmarks/prefill_prune/prefill_prune.py --lengths 2048,4096 \
        --out benchmarks/prefill_prune/results/prefill_prune_smollm2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from tokensieve.compat import with_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_rows, write_table

SCHEDULES = {
    "0.5,0.75@0.7,0.5": ((0.5, 0.75), (0.7, 0.5)),
    "0.25,0.5,0.75@0.7,0.5,0.35": ((0.25, 0.5, 0.75), (0.7, 0.5, 0.35)),
    "0.4,0.6,0.8@0.6,0.4,0.25": ((0.4, 0.6, 0.8), (0.6, 0.4, 0.25)),
}
DEPTHS = (0.1, 0.5, 0.9)


def plain_ttft(model, ids: torch.Tensor) -> tuple[float, list[int]]:
    from transformers import DynamicCache

    from tokensieve.kv import DecodeMeter

    cache = DynamicCache(config=model.config)
    meter = DecodeMeter(cache)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **with_cache(model, cache),
                             max_new_tokens=8, do_sample=False, temperature=None, top_p=None, top_k=None,
                             stopping_criteria=[meter])  # fmt: skip
    return meter.first - meter.start, out[0, ids.shape[1] :].tolist()


def main() -> None:
    import tokensieve as ts
    from tokensieve.core.ops.memory import cpu_threads
    from tokensieve.runtime.passkey import passkey_context

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--lengths", default="2048,4096")
    p.add_argument("--methods", default="lazyllm,spatten")
    p.add_argument("--schedules", default="all", help="'all' or names from SCHEDULES joined by ';'")
    p.add_argument("--out", default="benchmarks/prefill_prune/results/prefill_prune")
    args = p.parse_args()
    schedules = SCHEDULES if args.schedules == "all" else {k: SCHEDULES[k] for k in args.schedules.split(";")}
    cmd = (
        f".venv/bin/python benchmarks/prefill_prune/prefill_prune.py --model {args.model} --lengths {args.lengths} "
        f"--methods {args.methods} --out {args.out}"
    )
    model, tok = ts.load_model(args.model)
    fmt = ts.PromptFormat(tok)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        cells: dict[tuple[str, str], dict] = {}
        for depth in DEPTHS:
            task = passkey_context(tok, length, depth, key="40507")
            ids = torch.tensor([fmt.context_ids(task.context) + fmt.question_ids(task.question, task.answer_prefix)])
            ttft, toks = plain_ttft(model, ids)  # DynamicCache: every layer runs plain SDPA
            c = cells.setdefault(("plain", "-"), {"ttft": [], "correct": 0, "alive": None})
            c["ttft"].append(ttft)
            c["correct"] += task.correct(tok.decode(toks, skip_special_tokens=True))
            for method in args.methods.split(","):
                for name, (layers, keep) in schedules.items():
                    t0 = time.perf_counter()
                    ans = ts.decode(model, tok, task.context, task.question, method, max_new_tokens=8,
                                    answer_prefix=task.answer_prefix, layers=layers, keep=keep)  # fmt: skip
                    c = cells.setdefault((method, name), {"ttft": [], "correct": 0, "alive": None})
                    c["ttft"].append(ans.stats.ttft_seconds)
                    c["correct"] += task.correct(ans.text)
                    alive = ans.stats.extra["alive_per_layer"]
                    c["alive"] = sum(alive) / (len(alive) * alive[0])  # token-layers computed vs plain
                    c["revived"] = c.get("revived", 0) + ans.stats.extra["revived"]
                    print(f"{length} depth {depth} {method} {name}: {ans.text!r} ttft {ans.stats.ttft_seconds:.2f}s "
                          f"({time.perf_counter() - t0:.1f}s)", flush=True)  # fmt: skip
        plain = statistics.median(cells[("plain", "-")]["ttft"])
        for (method, name), c in cells.items():
            ttft = statistics.median(c["ttft"])
            rows.append({
                "length": ids.shape[1], "method": method, "schedule": name, "ttft_seconds": ttft,
                "ttft_ratio": plain / ttft, "token_layers_computed": c["alive"] or 1.0,
                "passkey_correct": c["correct"], "of": len(DEPTHS), "revived": c.get("revived", 0),
                "threads": cpu_threads(), "command": cmd,
            })  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out.with_suffix(".jsonl"), rows)
    lines = [
        f"# Prefill pruning on {args.model}: time to first token and pass-key quality",
        "",
        f"Command: `{cmd}`",
        "",
        "`schedule` = pruning layers (fractions of the depth) @ the fraction of the prompt kept after each;",
        "`computed` = token-layers computed relative to the plain prefill; `TTFT` = median over the 3 depths",
        "(prompt forward + first token); `speed-up` = plain TTFT / TTFT. `pass key` = correct of 3 depths",
        "(question inside the prompt). `revived` = tokens LazyLLM brought back from its aux cache while",
        "decoding the 8 answer tokens (summed over depths).",
        "",
        "| tokens | method | schedule | computed | TTFT s | speed-up | pass key | revived |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['length']} | {r['method']} | {r['schedule']} | {r['token_layers_computed']:.2f} | "
            f"{r['ttft_seconds']:.2f} | {r['ttft_ratio']:.2f}x | {r['passkey_correct']}/{r['of']} | {r['revived']} |"
        )
    write_table(out.with_suffix(".md"), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
