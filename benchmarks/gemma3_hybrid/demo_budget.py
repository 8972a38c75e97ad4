"""Issue 27, item 3: the demo's pass key on Gemma-3 (2k tokens), question unseen: which `keep` and `hybrid=` split
keep the answer? The settings are judged on validation samples (other depths and keys, `--split val`); the demo's
own sample (`--split demo`: the demo's key, depth 0.5) is reported afterwards. One prefill per sample, shared by
every setting; bytes measured.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gemma3_hybrid/demo_budget.py --split val \
        --out benchmarks/gemma3_hybrid/results/gemma3_hybrid/demo_budget_val
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_results

from tokensieve.kv import prefill
from tokensieve.runtime.models import load_model
from tokensieve.runtime.passkey import passkey_context

SETTINGS = [  # (method, keep, params)
    ("kvzip", 0.25, {}),
    ("kvzip", 0.25, {"min_window": 128}),
    ("kvzip", 0.25, {"hybrid": "even"}),
    ("kvzip", 0.35, {}),
    ("kvzip", 0.5, {}),
    ("kvzip", 0.5, {"hybrid": "even"}),
    ("kvzip", 0.75, {}),  # added after the first validation sample lost the key at every keep <= 0.5
    ("kvzip", 0.75, {"hybrid": "full-only"}),
    ("mikv", 0.25, {"importance": "kvzip", "budget_of": "bytes"}),
    ("mikv", 0.5, {"importance": "kvzip", "budget_of": "bytes"}),
]


def samples(split: str, tokens: int) -> list[tuple[str, float]]:
    if split == "demo":  # exactly what `tokensieve demo --model gemma3-270m` hides
        return [(str(random.Random(tokens).randint(10000, 99999)), 0.5)]
    rng = random.Random(27)  # validation: other keys and depths than the demo's
    return [(str(rng.randint(10000, 99999)), d) for d in (0.25, 0.75)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--split", choices=("val", "demo"), default="val")
    ap.add_argument("--out", required=True)
    ap.add_argument("--from-log", help="tabulate the rows a stopped run printed (its stdout) instead of running")
    args = ap.parse_args()
    if args.from_log:
        text = Path(args.from_log).read_text().splitlines()
        write(args, [ast.literal_eval(line) for line in text if line.startswith("{'key'")])
        return
    model, tok = load_model(args.model)
    rows = []
    for key, depth in samples(args.split, args.tokens):
        task = passkey_context(tok, args.tokens, depth, key)
        pre = prefill(model, tok, task.context, methods=["kvzip"])
        full = pre.uncompressed().answer(task.question, answer_prefix=task.answer_prefix)
        rows.append(dict(key=key, depth=depth, setting="full", keep=1.0, bytes=1.0, sliding=None, answer=full,
                         correct=task.correct(full)))  # fmt: skip
        print(rows[-1], flush=True)
        for method, keep, params in SETTINGS:
            c = pre.compress(method, keep=keep, **params)
            ans = c.answer(task.question, answer_prefix=task.answer_prefix)
            s = c.stats
            name = method + "".join(f":{k}={v}" for k, v in params.items())
            rows.append(dict(key=key, depth=depth, setting=name, keep=keep, bytes=round(s.ratio, 3),
                             sliding=round(s.kv_bytes_sliding / s.kv_bytes, 3), answer=ans,
                             correct=task.correct(ans)))  # fmt: skip
            print(rows[-1], flush=True)
    write(args, rows)


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    lines = [
        f"# Gemma-3 270M, the demo's pass key at {args.tokens} tokens, question unseen ({args.split} samples)",
        "",
        "| key | depth | setting | keep | bytes held | of which sliding | answer | right |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['key']} | {r['depth']} | `{r['setting']}` | {r['keep']} | {r['bytes']} | "
                     f"{r['sliding'] if r['sliding'] is not None else '-'} | {r['answer'][:40]!r} | "
                     f"{'yes' if r['correct'] else 'no'} |")  # fmt: skip
    write_results(Path(args.out), rows, lines)


if __name__ == "__main__":
    main()
