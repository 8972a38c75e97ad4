"""Fixed-budget decode eviction: a long generation after a ~1k-token prompt, every method vs the full cache.

For each method the generation is *teacher-forced* on the full cache's own greedy tokens, so every step
is compared on the same prefix: greedy agreement (argmax equals the full cache's token), the NLL of the
full cache's tokens, and the first step at which a free-running greedy decode would diverge. The
full-cache row decodes greedily with a plain ``DynamicCache``. Bytes are measured from the cache tensors'
storages after every step (peak = the largest); the in-forward peak adds the one new token per layer.
Decode tokens/s is the same hand-written loop for every row (one forward per token, no sampling
overhead), so rows are comparable; speed figures need a quiet machine. Usage:

    .venv/bin/python benchmarks/decode_evict.py --prompt-tokens 1000 --new-tokens 2000 --budget 256 \
        --out benchmarks/results/decode_evict_smollm2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from longprompt import continuation_ids

FULL = "full"


def run(model, cache, prompt: torch.Tensor, n_new: int, forced: torch.Tensor | None) -> dict:
    """One forward per token. ``forced`` feeds those tokens (teacher forcing) instead of the argmax."""
    from tokensieve.measure.memory import tensor_bytes

    def kv_bytes() -> int:
        return tensor_bytes(t for layer in cache.layers if layer.is_initialized for t in (layer.keys, layer.values))

    tokens, agree, nll, peak = [], 0, 0.0, 0
    label = "reference" if forced is None else "forced"
    first_diverge = None
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(prompt, past_key_values=cache, logits_to_keep=1).logits[:, -1]
        ttft = time.perf_counter() - start
        peak = kv_bytes()
        times = []
        for step in range(n_new):
            greedy = int(logits.argmax(-1))
            nxt = greedy if forced is None else int(forced[step])
            if forced is not None:
                agree += greedy == nxt
                if greedy != nxt and first_diverge is None:
                    first_diverge = step
            nll -= float(torch.log_softmax(logits.float(), -1)[0, nxt])
            tokens.append(nxt)
            if step == n_new - 1:
                break
            t0 = time.perf_counter()
            logits = model(torch.tensor([[nxt]]), past_key_values=cache).logits[:, -1]
            times.append(time.perf_counter() - t0)
            peak = max(peak, kv_bytes())
            if (step + 1) % 250 == 0:
                print(f"  {label} step {step + 1}/{n_new}, {len(times) / sum(times):.1f} tok/s", flush=True)
    steady = times[len(times) // 2 :] or times
    return {
        "tokens": tokens,
        "ttft_seconds": ttft,
        "decode_seconds": sum(times),
        "tokens_per_second": len(times) / max(sum(times), 1e-9),
        "tokens_per_second_second_half": len(steady) / max(sum(steady), 1e-9),
        "peak_kv_bytes": peak,
        "final_kv_bytes": kv_bytes(),
        "greedy_agreement": agree / n_new if forced is not None else 1.0,
        "first_divergence": first_diverge if forced is not None else None,
        "nll": nll / n_new,
    }


def main() -> None:
    import tokensieve as ts
    from tokensieve.evicting import DECODE_RULES, DecodeCache
    from tokensieve.measure.memory import mib

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--new-tokens", type=int, default=2000)
    p.add_argument("--budget", type=int, default=256)
    p.add_argument("--methods", default=",".join(DECODE_RULES))
    p.add_argument("--out", default="benchmarks/results/decode_evict")
    args = p.parse_args()

    from transformers import DynamicCache

    model, tok = ts.load_model(args.model)
    prompt = continuation_ids(tok, args.prompt_tokens)
    # the reference may not stop early: EOS is suppressed by generating a fixed count, argmax over all
    rows = []
    ref_path = Path(args.out).with_suffix(".reference.json")
    if ref_path.exists():  # the full-cache run is deterministic: reuse it when a method is re-run alone
        ref = json.loads(ref_path.read_text())
    else:
        ref = run(model, DynamicCache(config=model.config), prompt, args.new_tokens, None)
        ref.update(method=FULL, budget=None, state_bytes=0, peak_tokens_held=prompt.shape[1] + args.new_tokens)
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(json.dumps(ref))
    rows.append(ref)
    forced = torch.tensor(ref["tokens"])
    print(f"{FULL:<13} {ref['tokens_per_second']:6.1f} tok/s  peak {mib(ref['peak_kv_bytes']):7.1f} MiB", flush=True)
    for method in args.methods.split(","):
        cache = DecodeCache(model, method, budget=args.budget)
        r = run(model, cache, prompt, args.new_tokens, forced)
        r.update(
            method=method,
            budget=args.budget,
            state_bytes=cache.state_bytes(),
            peak_tokens_held=cache.peak_tokens_held(),
        )
        rows.append(r)
        print(
            f"{method:<13} {r['tokens_per_second']:6.1f} tok/s  peak {mib(r['peak_kv_bytes']):7.1f} MiB  "
            f"agree {r['greedy_agreement']:.3f}  nll {r['nll']:.3f}  diverges at {r['first_divergence']}",
            flush=True,
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = (
        f".venv/bin/python benchmarks/decode_evict.py --model {args.model} --prompt-tokens {args.prompt_tokens} "
        f"--new-tokens {args.new_tokens} --budget {args.budget} --out {args.out}"
    )
    with open(out.with_suffix(".jsonl"), "w") as f:
        for r in rows:
            f.write(
                json.dumps(
                    {k: v for k, v in r.items() if k != "tokens"}
                    | {"prompt_tokens": prompt.shape[1], "torch_threads": torch.get_num_threads(), "command": cmd}
                )
                + "\n"
            )
    full = rows[0]
    lines = [
        f"# Decode eviction on {args.model}: {prompt.shape[1]}-token prompt, {args.new_tokens} generated tokens, "
        f"budget {args.budget}",
        "",
        f"Command: `{cmd}`",
        "",
        "Every method row is teacher-forced on the full cache's greedy tokens: `agree` = fraction of steps whose",
        "argmax equals the full cache's token, `NLL` = mean negative log-likelihood of those tokens (the full",
        "row's own NLL is the floor), `diverges at` = the first step where a free-running greedy decode would",
        "differ. `peak KV` is measured from the cache tensors' storages after every step; the running scores",
        "(`state`) are separate. The in-forward peak is `peak held` tokens per head in one layer at a time",
        "(the budget + the new token). tok/s is one forward per token in the same loop for every row.",
        "",
        "| cache | peak KV MiB | state MiB | peak held / head | tok/s | tok/s 2nd half | vs full | agree | NLL | "
        "diverges at |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = FULL if r["method"] == FULL else f"{r['method']} @ {r['budget']}"
        lines.append(
            f"| {name} | {mib(r['peak_kv_bytes']):.1f} | {mib(r['state_bytes']):.2f} | {r['peak_tokens_held']} | "
            f"{r['tokens_per_second']:.1f} | {r['tokens_per_second_second_half']:.1f} | "
            f"{r['tokens_per_second'] / full['tokens_per_second']:.2f}x | {r['greedy_agreement']:.3f} | "
            f"{r['nll']:.3f} | {'-' if r['first_divergence'] is None else r['first_divergence']} |"
        )
    lines.append("")
    lines.append(f"NLL perplexity of the full cache's own tokens: {math.exp(full['nll']):.3f}.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
