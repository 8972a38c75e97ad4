"""Fixed-budget decode eviction over a long generation: every method vs the full cache.

A 1k-token prompt of natural text, then 2,000 more tokens fed one forward at a time, as a generation
feeds its own tokens: the *true* continuation of the text (teacher forcing), because a 135M model's own
greedy continuation falls into a loop of a few sentences within ~100 tokens, which any cache predicts.
The text is Python's reference documentation (``pydoc_data.topics``, shipped with CPython: offline and
deterministic). Per step, for every cache: the argmax (greedy token) and the NLL of the true next token.

- greedy agreement = fraction of steps whose argmax equals the full cache's argmax (same prefix);
- NLL / perplexity of the true continuation (the full cache's is the reference);
- peak KV bytes, measured from the cache tensors' storages after every step (the in-forward peak is the
  budget + 1 token per layer at a time), and the running scores' bytes;
- decode tokens/s in the same hand-written loop for every row (one forward per token).

Speed figures need a quiet machine. Usage:

    .venv/bin/python benchmarks/decode_evict/decode_evict.py --prompt-tokens 1000 --new-tokens 2000 --budget 256 \
        --out benchmarks/decode_evict/results/decode_evict_smollm2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import command, write_results

from tokensieve.compat import with_cache

FULL = "full"


def text_tokens(tok, topic: str, n: int) -> list[int]:
    from pydoc_data.topics import topics

    ids = tok.encode(topics[topic], add_special_tokens=False)
    if len(ids) < n:
        raise SystemExit(f"topic {topic!r} has {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def run(model, cache, prompt: torch.Tensor, forced: list[int], label: str) -> dict:
    """Feed ``prompt``, then each token of ``forced`` in its own forward; record argmax and NLL per step."""
    from tokensieve.core.ops.memory import layers_bytes

    def kv_bytes() -> int:
        return layers_bytes(cache.layers)

    argmax, nlls, times = [], [], []
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(prompt, **with_cache(model, cache), logits_to_keep=1).logits[:, -1]
        ttft = time.perf_counter() - start
        peak = kv_bytes()
        for step, nxt in enumerate(forced):
            argmax.append(int(logits.argmax(-1)))
            nlls.append(-float(torch.log_softmax(logits.float(), -1)[0, nxt]))
            if step == len(forced) - 1:
                break
            t0 = time.perf_counter()
            logits = model(torch.tensor([[nxt]]), **with_cache(model, cache)).logits[:, -1]
            times.append(time.perf_counter() - t0)
            peak = max(peak, kv_bytes())
            if (step + 1) % 500 == 0:
                print(f"  {label} step {step + 1}/{len(forced)}, {len(times) / sum(times):.1f} tok/s", flush=True)
    steady = times[len(times) // 2 :] or times
    return {
        "argmax": argmax,
        "nll": sum(nlls) / len(nlls),
        "nll_second_half": sum(nlls[len(nlls) // 2 :]) / max(1, len(nlls) - len(nlls) // 2),
        "ttft_seconds": ttft,
        "decode_seconds": sum(times),
        "tokens_per_second": len(times) / max(sum(times), 1e-9),
        "tokens_per_second_second_half": len(steady) / max(sum(steady), 1e-9),
        "peak_kv_bytes": peak,
        "final_kv_bytes": kv_bytes(),
    }


def main() -> None:
    from transformers import DynamicCache

    import tokensieve as ts
    from tokensieve.core.ops.memory import mib
    from tokensieve.kv import DECODE_RULES, DecodeCache

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--topic", default="specialnames", help="a pydoc_data.topics entry (the text)")
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--new-tokens", type=int, default=2000)
    p.add_argument("--budget", type=int, default=256)
    p.add_argument("--methods", default=",".join(DECODE_RULES))
    p.add_argument("--out", default="benchmarks/decode_evict/results/decode_evict")
    args = p.parse_args()
    cmd = command("decode_evict/decode_evict.py", args)
    model, tok = ts.load_model(args.model)
    ids = text_tokens(tok, args.topic, args.prompt_tokens + args.new_tokens)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    prompt = torch.tensor([bos + ids[: args.prompt_tokens]])
    forced = ids[args.prompt_tokens :]

    rows = []
    ref = run(model, DynamicCache(config=model.config), prompt, forced, FULL)
    ref.update(method=FULL, budget=None, state_bytes=0, peak_tokens_held=prompt.shape[1] + len(forced))
    rows.append(ref)
    print(f"{FULL:<13} {ref['tokens_per_second']:6.1f} tok/s  peak {mib(ref['peak_kv_bytes']):7.1f} MiB  "
          f"nll {ref['nll']:.3f}", flush=True)  # fmt: skip
    for method in args.methods.split(","):
        cache = DecodeCache(model, method, budget=args.budget)
        r = run(model, cache, prompt, forced, method)
        r.update(method=method, budget=args.budget, state_bytes=cache.state_bytes(),
                 peak_tokens_held=cache.peak_tokens_held())  # fmt: skip
        rows.append(r)
        print(f"{method:<13} {r['tokens_per_second']:6.1f} tok/s  peak {mib(r['peak_kv_bytes']):7.1f} MiB  "
              f"nll {r['nll']:.3f}", flush=True)  # fmt: skip
    for r in rows:
        same = [a == b for a, b in zip(r["argmax"], ref["argmax"], strict=True)]
        r["greedy_agreement"] = sum(same) / len(same)
        r["first_divergence"] = None if all(same) else same.index(False)

    run_fields = {"prompt_tokens": prompt.shape[1], "new_tokens": len(forced), "torch_threads": torch.get_num_threads()}
    records = [{k: v for k, v in r.items() if k != "argmax"} | run_fields | {"command": cmd} for r in rows]
    lines = [
        f"# Decode eviction on {args.model}: {prompt.shape[1]}-token prompt, {len(forced)} more tokens, "
        f"budget {args.budget} tokens per KV head",
        "",
        f"Command: `{cmd}` ({torch.get_num_threads()} torch thread(s))",
        "",
        f"The text (`pydoc_data.topics['{args.topic}']`, Python's reference prose with some code) is fed one",
        "token per forward after the prompt, as a generation feeds its tokens (teacher forcing on the true text:",
        "SmolLM2's own greedy continuation loops within ~100 tokens). `agree` = steps whose argmax equals the",
        "full cache's argmax; `PPL` = perplexity of the true continuation (2nd half in brackets); `peak KV` =",
        "the most bytes held by the cache tensors after any step (measured); `state` = the running scores;",
        "`held` = the most slots one layer held per KV head while generating (inside a forward: the budget",
        "plus the new token). tok/s: one forward per token in the same loop for every row.",
        "",
        "| cache | peak KV MiB | state MiB | held | tok/s | tok/s 2nd half | vs full | agree | PPL | first diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    full = rows[0]
    for r in rows:
        name = FULL if r["method"] == FULL else f"{r['method']} @ {r['budget']}"
        lines.append(
            f"| {name} | {mib(r['peak_kv_bytes']):.1f} | {mib(r['state_bytes']):.2f} | {r['peak_tokens_held']} | "
            f"{r['tokens_per_second']:.1f} | {r['tokens_per_second_second_half']:.1f} | "
            f"{r['tokens_per_second'] / full['tokens_per_second']:.2f}x | {r['greedy_agreement']:.3f} | "
            f"{math.exp(r['nll']):.2f} ({math.exp(r['nll_second_half']):.2f}) | "
            f"{'-' if r['first_divergence'] is None else r['first_divergence']} |"
        )
    write_results(Path(args.out), records, lines)


if __name__ == "__main__":
    main()
