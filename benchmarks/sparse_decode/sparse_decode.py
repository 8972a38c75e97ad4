"""Sparse retrieval decoding on CPU: read fraction, selection recall, quality and decode step time vs dense.

For each context length, every method at every read budget runs on the *same* prefilled cache
(``SparseCache.adopt``), so only decoding differs:

- pass key: 3 depths x 2 keys, question inside the prompt, answer started by "The pass key is"; the
  selection is measured at every decode step (recall / IoU against the exact top-k by the true
  attention, the true attention mass read, the fraction of K/V bytes read);
- fidelity: a ``--fidelity-tokens`` continuation of prose teacher-forced on the dense greedy tokens
  (greedy agreement, NLL);
- speed: ``--timed-steps`` decode steps without measurement; the median step time vs the plain model
  (``DynamicCache`` on SDPA). Speed needs a quiet machine.

    .venv/bin/python benchmarks/sparse_decode/sparse_decode.py --lengths 2048,4096 --reads 0.125,0.0625 \
        --out benchmarks/sparse_decode/results/sparse_decode_smollm2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import command, continuation_ids, stamp, step_loop, write_results

from tokensieve.compat import with_cache

DEPTHS = (0.1, 0.5, 0.9)
KEYS = ("40507", "88213")


def main() -> None:
    import tokensieve as ts
    from tokensieve.core.ops.memory import cpu_threads
    from tokensieve.kv import SPARSE, SparseCache
    from tokensieve.runtime.passkey import passkey_context

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--lengths", default="2048,4096")
    p.add_argument("--reads", default="0.125,0.0625")
    p.add_argument("--methods", default=",".join(SPARSE))
    p.add_argument("--fidelity-tokens", type=int, default=64)
    p.add_argument("--timed-steps", type=int, default=24)
    p.add_argument("--out", default="benchmarks/sparse_decode/results/sparse_decode")
    args = p.parse_args()
    methods, reads = args.methods.split(","), [float(r) for r in args.reads.split(",")]
    cmd = command("sparse_decode/sparse_decode.py", args)
    from transformers import DynamicCache

    model, tok = ts.load_model(args.model)
    fmt = ts.PromptFormat(tok)
    rows: list[dict] = []

    def cell(length: int, method: str, read: float | None) -> dict:
        for r in rows:
            if r["length"] == length and r["method"] == method and r["read"] == read:
                return r
        r = {"length": length, "method": method, "read": read, "passkey": [], "meters": []}
        rows.append(r)
        return r

    def sparse(method: str, read: float, measure: bool, prefilled) -> SparseCache:
        return SparseCache(model, method, read=read, tokenizer=tok, measure=measure).adopt(prefilled)

    for length in [int(x) for x in args.lengths.split(",")]:
        # --- pass key ---------------------------------------------------------------------------
        for depth in DEPTHS:
            for key in KEYS:
                task = passkey_context(tok, length, depth, key=key)
                ids = fmt.context_ids(task.context) + fmt.question_ids(task.question, task.answer_prefix)
                pre = ts.prefill(model, tok, torch.tensor([ids]))
                first = pre.last_logits

                def answer(cache, task=task, first=first) -> bool:
                    out = step_loop(model, cache, first, 8, None)["tokens"]
                    return task.correct(tok.decode(out, skip_special_tokens=True))

                cell(length, "dense", None)["passkey"].append(answer(pre.cache.fork()))
                for method in methods:
                    for read in reads:
                        cache = sparse(method, read, True, pre.cache)
                        c = cell(length, method, read)
                        c["passkey"].append(answer(cache))
                        c["meters"].append(cache.report())
                print(f"{length} pass key depth {depth} key {key}: done", flush=True)

        # --- fidelity and speed on a prose continuation --------------------------------------------
        ids = continuation_ids(tok, length)
        pre = ts.prefill(model, tok, ids)
        dense = step_loop(model, pre.cache.fork(), pre.last_logits, args.fidelity_tokens, None)
        plain_cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            plain_first = model(ids, **with_cache(model, plain_cache), logits_to_keep=1).logits[:, -1]
        plain = step_loop(model, plain_cache, plain_first, args.timed_steps, dense["tokens"])
        d = cell(length, "dense", None)
        d.update(agree=1.0, nll=dense["nll"], step_ms=1e3 * statistics.median(plain["times"]), context=ids.shape[1])
        for method in methods:
            for read in reads:
                c = cell(length, method, read)
                fid = step_loop(
                    model, sparse(method, read, True, pre.cache), pre.last_logits, args.fidelity_tokens, dense["tokens"]
                )
                timed = step_loop(
                    model, sparse(method, read, False, pre.cache), pre.last_logits, args.timed_steps, dense["tokens"]
                )
                c.update(agree=fid["agree"], nll=fid["nll"], step_ms=1e3 * statistics.median(timed["times"]))
                print(f"{length} {method} {read}: agree {fid['agree']:.3f} step {c['step_ms']:.1f} ms", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Sparse decoding on {args.model} (CPU, {cpu_threads()} threads)",
        "",
        f"Command: `{cmd}`",
        "",
        "Every row decodes from the same prefilled cache. `read` = fraction of the K/V bytes touched per step",
        "(scoring + the attended slots' keys and values); `attended` = fraction of the slots attended;",
        "`recall` / `IoU` = the read set against the exact top-k (same size) by the true attention (GQA mean),",
        "`mass` = true attention mass on the read slots; all averaged over layers and decode steps of the",
        "pass-key answers. `pass key` = correct answers out of 6 (3 depths x 2 keys). `agree` / `NLL` =",
        f"teacher-forced on the dense greedy continuation ({args.fidelity_tokens} tokens). `step ms` = median",
        f"decode step over {args.timed_steps} steps ('dense' = the plain model on SDPA with a DynamicCache).",
        "",
        "| context | method | read budget | read | attended | recall | IoU | mass | pass key | agree | NLL | "
        "step ms | vs dense |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with open(out.with_suffix(".jsonl"), "w") as f:
        for r in rows:
            meters = r.pop("meters")
            for k in ("read_fraction", "attended_fraction", "recall", "iou", "attention_mass"):
                r[k] = sum(m[k] for m in meters) / len(meters) if meters else 1.0
            r["passkey_correct"] = sum(r.pop("passkey"))
            r["command"] = cmd
            f.write(json.dumps(stamp(r)) + "\n")
    for r in rows:
        dense = next(x for x in rows if x["length"] == r["length"] and x["method"] == "dense")
        budget = "-" if r["read"] is None else f"1/{round(1 / r['read'])}"
        lines.append(
            f"| {dense.get('context', r['length'])} | {r['method']} | {budget} | {r['read_fraction']:.3f} | "
            f"{r['attended_fraction']:.3f} | {r['recall']:.3f} | {r['iou']:.3f} | {r['attention_mass']:.3f} | "
            f"{r['passkey_correct']}/6 | {r['agree']:.3f} | {r['nll']:.3f} | {r['step_ms']:.1f} | "
            f"{dense['step_ms'] / r['step_ms']:.2f}x |"
        )
    write_results(out, None, lines)  # the rows are written above, as they are folded


if __name__ == "__main__":
    main()
