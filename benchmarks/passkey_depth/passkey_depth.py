"""Pass-key accuracy by depth for one method, with the question seen (query-aware) or not.

    .venv/bin/python benchmarks/passkey_depth/passkey_depth.py --method snapkv --keep 0.25 --tokens 1500 \
        --out benchmarks/passkey_depth/results/passkey_depth_snapkv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import tokensieve as ts
from tokensieve.runtime.passkey import passkey_context

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_rows, write_table

KEYS = ["31147", "40507", "88213", "12958", "73920", "56081"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--method", default="snapkv")
    p.add_argument("--keep", type=float, default=0.25)
    p.add_argument("--tokens", type=int, default=1500)
    p.add_argument("--depths", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    p.add_argument("--out", default="benchmarks/passkey_depth/results/passkey_depth")
    args = p.parse_args()
    model, tok = ts.load_model(args.model)
    depths = [float(d) for d in args.depths.split(",")]
    rows = []
    for depth in depths:
        for key in KEYS:
            task = passkey_context(tok, args.tokens, depth, key=key)
            pre = ts.prefill(model, tok, task.context, methods=[args.method])
            full = pre.uncompressed().answer(task.question, answer_prefix=task.answer_prefix)
            unseen = pre.compress(args.method, keep=args.keep).answer(task.question, answer_prefix=task.answer_prefix)
            aware = ts.generate(
                model,
                tok,
                task.context,
                task.question,
                args.method,
                keep=args.keep,
                query_aware=True,
                answer_prefix=task.answer_prefix,
            ).text
            row = {
                "depth": depth,
                "key": key,
                "full": task.correct(full),
                "unseen": task.correct(unseen),
                "aware": task.correct(aware),
                "answers": [full, unseen, aware],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out.with_suffix(".jsonl"), rows)
    lines = [
        f"# Pass key at {args.tokens} tokens of prose: {args.method}, keep={args.keep}, {args.model}",
        "",
        f"Command: `.venv/bin/python benchmarks/passkey_depth/passkey_depth.py --model {args.model} "
        f"--method {args.method} "
        f"--keep {args.keep} --tokens {args.tokens} --out {args.out}`",
        "",
        f"Correct answers out of {len(KEYS)} keys per depth (greedy). `unseen`: the context is compressed alone",
        "and the question comes after (cache reuse); `query-aware`: the question is inside the compressed prompt.",
        "",
        "| depth | full cache | question unseen | query-aware |",
        "|---:|---:|---:|---:|",
    ]
    for depth in depths:
        g = [r for r in rows if r["depth"] == depth]
        lines.append(
            f"| {depth:.1f} | {sum(r['full'] for r in g)} | {sum(r['unseen'] for r in g)} | "
            f"{sum(r['aware'] for r in g)} |"
        )
    tot = {k: sum(r[k] for r in rows) for k in ("full", "unseen", "aware")}
    lines.append(f"| all | {tot['full']}/{len(rows)} | {tot['unseen']}/{len(rows)} | {tot['aware']}/{len(rows)} |")
    write_table(out.with_suffix(".md"), lines)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
