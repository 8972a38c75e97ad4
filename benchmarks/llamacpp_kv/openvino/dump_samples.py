"""Write run.py's samples (same task, length, seed, indices) as full prompt texts for OpenVINO GenAI, which runs
in its own virtual environment (it cannot import tokensieve's torch stack): the llama.cpp chat template around
context and question, exactly the tokens run.py's engine decodes, plus the scoring rule of each question.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/openvino/dump_samples.py --out /tmp/ov_samples.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from tokensieve.engines.llamacpp import Engine, Settings
from tokensieve.measure.tasks import get_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="niah_single:haystack=prose")
    p.add_argument("--out", default="/tmp/ov_samples.json")
    args = p.parse_args()
    eng = Engine(args.model, Settings(n_ctx=256))  # its tokenizer and chat template only
    pr = eng.prompt
    task = get_task(args.task)
    out = []
    for index in range(args.samples):
        s = task.sample(eng.tokenizer, args.tokens, index, seed=args.seed)
        for qi, q in enumerate(s.questions):
            text = (pr.context_head + s.context + pr.context_tail + q.text + pr.question_tail + q.answer_prefix
                    if pr.chat else None)  # fmt: skip
            out.append({"index": index, "question": qi, "prompt": text, "max_new_tokens": q.max_new_tokens,
                        "context_tokens": len(pr.context_ids(s.context)), "q": asdict(q)})  # fmt: skip
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": out}))


if __name__ == "__main__":
    main()
