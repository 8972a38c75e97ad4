"""kvzip's reconstruction pass in bf16 against fp32 on fresh samples (a seed the reported tables never used): rank
agreement of the scores (Spearman per layer and KV head; overlap of the global top-k at each keep), the answers at
each keep, and the pass's seconds. It decides kvzip's default precision ("auto": bf16 where native).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kvzip_precision/precision.py --length 1024 --samples 10 \
        --seed 7 --out benchmarks/kvzip_precision/results/smollm2_1k
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py

from _common import command, write_results

KEEPS = (0.5, 0.25, 0.1)


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1).argsort(-1).float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho along the last axis (ties broken by position; direct formula on ranks)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--task", default="niah_single:haystack=prose")
    p.add_argument("--out", default="benchmarks/kvzip_precision/results/smollm2_1k")
    p.add_argument("--from-log", help="rebuild the table from the rows a cut-short run printed (one dict a line)")
    args = p.parse_args()
    if args.from_log:
        rows = [ast.literal_eval(line) for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
        return table(args, rows)
    from tokensieve.kv import get_method, prefill
    from tokensieve.measure.tasks import get_task, score
    from tokensieve.runtime.models import load_model

    model, tok = load_model("smollm2")
    task = get_task(args.task)
    rows = []
    for i in range(args.samples):
        sample = task.sample(tok, args.length, i, args.seed)
        q = sample.questions[0]
        pre = prefill(model, tok, sample.context, methods=["kvzip"])
        scores, seconds = {}, {}
        for prec in ("fp32", "bf16"):
            m = get_method("kvzip", precision=prec)
            start = time.perf_counter()
            passes = m.whole_pass(pre)
            seconds[prec] = time.perf_counter() - start
            scores[prec] = torch.stack([passes[k][0][0] for k in sorted(passes)])  # [L, Hkv, T]
        a, b = scores["fp32"], scores["bf16"]
        rho = spearman(a, b)
        row = {"sample": i, "seed": args.seed, "context_tokens": pre.context_tokens, "prefill_seconds": pre.seconds,
               "pass_seconds_fp32": seconds["fp32"], "pass_seconds_bf16": seconds["bf16"],
               "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min())}  # fmt: skip
        for keep in KEEPS:
            k = round(keep * a.numel())
            top_a, top_b = set(a.flatten().topk(k).indices.tolist()), set(b.flatten().topk(k).indices.tolist())
            row[f"topk_overlap_{keep}"] = len(top_a & top_b) / k
            for prec in ("fp32", "bf16"):
                ans = pre.compress(get_method("kvzip", precision=prec), keep=keep).answer(
                    q.text, answer_prefix=q.answer_prefix, max_new_tokens=q.max_new_tokens
                )
                text = ans if isinstance(ans, str) else ans[0]
                row[f"answer_{prec}_{keep}"] = text
                row[f"score_{prec}_{keep}"] = score(text, q)[0]
        rows.append(row)
        print(row, flush=True)
    table(args, rows)


def table(args: argparse.Namespace, rows: list[dict]) -> None:
    from tokensieve.core.ops.precision import native_bf16

    n = len(rows)

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / n

    lines = [
        f"# kvzip bf16 vs fp32, SmolLM2, {args.task} at {args.length} tokens, {n} fresh samples (seed {args.seed});"
        f" this CPU computes bf16 natively: {native_bf16('cpu')}",
        "",
        f"Spearman rho of the scores per layer and KV head: mean {mean('spearman_mean'):.4f}, lowest"
        f" {min(r['spearman_min'] for r in rows):.4f}. Reconstruction pass: fp32 {mean('pass_seconds_fp32'):.2f} s,"
        f" bf16 {mean('pass_seconds_bf16'):.2f} s (prefill {mean('prefill_seconds'):.2f} s).",
        "",
        "| keep | global top-k overlap | fp32 answers right | bf16 answers right | same answer text |",
        "|---|---|---|---|---|",
    ]
    for keep in KEEPS:
        same = sum(r[f"answer_fp32_{keep}"] == r[f"answer_bf16_{keep}"] for r in rows)
        right = [sum(r[f"score_{p}_{keep}"] for r in rows) for p in ("fp32", "bf16")]
        lines.append(f"| {keep} | {mean(f'topk_overlap_{keep}'):.4f} | {right[0]:.0f}/{n} | {right[1]:.0f}/{n} |"
                     f" {same}/{n} |")  # fmt: skip
    if n < args.samples:
        lines += ["", f"{n} of the {args.samples} samples asked for: the run was cut short at the deadline."]
    shown = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "from_log"})
    write_results(Path(args.out), rows, lines, command("kvzip_precision/precision.py", shown, "OMP_NUM_THREADS=1"))


if __name__ == "__main__":
    main()
