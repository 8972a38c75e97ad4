"""The HF path's own method on the same samples as ``run.py`` (the comparison row: the cost of one shared
selection against the HF path's per-head budgets). Per sample one prefill (``tokensieve.kv.prefill``), then a
compressed fork per (method, keep), question unseen. Each row records whether the HF tokenizer built the same
context text as llama.cpp's (``same_text``). Rows go to ``--out`` (JSON lines, resumable).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/hf_same.py --model smollm2 --tokens 2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import done_keys, meta

from tokensieve.engines.llamacpp import Engine, Settings
from tokensieve.kv.pipeline import prefill
from tokensieve.measure.tasks import get_task, score
from tokensieve.runtime.models import load_model


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="niah_single:haystack=prose")
    p.add_argument("--methods", default="kvzip")
    p.add_argument("--keeps", default="0.5,0.25,0.1")
    p.add_argument("--out", default="benchmarks/llamacpp_kv/results/hf_smollm2_2k.jsonl")
    args = p.parse_args()
    task = get_task(args.task)
    out_path = Path(args.out)
    done = done_keys(out_path)
    model, tok = load_model(args.model)
    eng = Engine(args.model, Settings(n_ctx=256))  # only its tokenizer: the llama.cpp run's sample text
    methods = [m for m in args.methods.split(",") if m]
    keeps = [float(k) for k in args.keeps.split(",") if k]
    with open(out_path, "a") as out:
        out.write(json.dumps(meta(args)) + "\n")
        for index in range(args.samples):
            sample = task.sample(tok, args.tokens, index, seed=args.seed)
            same = sha(sample.context) == sha(task.sample(eng.tokenizer, args.tokens, index, seed=args.seed).context)
            cells = [(m, k) for m in methods for k in keeps]
            keys = {
                c: json.dumps(["hf", args.model, args.task, args.tokens, args.seed, index, c[0], c[1]]) for c in cells
            }
            if all(keys[c] in done for c in cells):
                continue
            t = time.perf_counter()
            pre = prefill(model, tok, sample.context, methods=methods)
            prefill_s = time.perf_counter() - t
            lines = []
            for m, k in cells:
                t = time.perf_counter()
                ctx = pre.compress(m, keep=k)
                comp_s = time.perf_counter() - t
                for qi, q in enumerate(sample.questions):
                    text = ctx.answer(q.text, max_new_tokens=q.max_new_tokens, answer_prefix=q.answer_prefix)
                    s, _ = score(text, q)
                    lines.append(json.dumps({
                        "type": "row", "key": keys[(m, k)], "engine": "hf", "model": args.model, "task": args.task,
                        "tokens": args.tokens, "seed": args.seed, "index": index, "cell": f"hf-{m}/{k}",
                        "method": m, "keep": k, "question": qi, "score": s, "answer": text, "same_text": same,
                        "prefill_seconds": prefill_s, "compress_seconds": comp_s,
                        "kv_bytes": ctx.stats.kv_bytes, "kv_bytes_full": ctx.stats.kv_bytes_full,
                    }) + "\n")  # fmt: skip
            out.write("".join(lines))
            out.flush()
            print(f"sample {index + 1}/{args.samples} done", flush=True, file=sys.stderr)


if __name__ == "__main__":
    main()
