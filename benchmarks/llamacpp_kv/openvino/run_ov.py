"""OpenVINO GenAI's built-in KV eviction (``CacheEvictionConfig``) on run.py's samples, from the same GGUF file.
Runs in a throwaway virtual environment with only ``openvino-genai`` installed (it pulls openvino, openvino-tokenizers
and numpy; no torch). Its eviction runs while the prompt is read, block by block, with the question at the end of
the prompt (inside its recent window): it is not question-unseen like run.py's rows. Writes one row per sample x
cell with the raw answer; ``summarize.py`` scores them with tokensieve's rules (each row carries its question).

    /tmp/ov/venv/bin/python run_ov.py --samples /tmp/ov_samples.json --gguf PATH.gguf --out results/openvino_raw.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import openvino_genai as ov


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", required=True)
    p.add_argument("--gguf", required=True)
    p.add_argument("--keeps", default="1.0,0.5,0.25,0.1")
    p.add_argument("--start", type=int, default=32, help="sink tokens (start_size)")
    p.add_argument("--recent", type=int, default=128, help="recent tokens (recent_size)")
    p.add_argument("--out", default="results/openvino_raw.jsonl")
    args = p.parse_args()
    data = json.loads(Path(args.samples).read_text())
    out_path = Path(args.out)
    done = set()
    if out_path.exists():
        done = {json.loads(x).get("key") for x in out_path.read_text().splitlines() if x.strip()}
    keeps = [float(k) for k in args.keeps.split(",")]
    with open(out_path, "a") as out:
        out.write(json.dumps({"type": "meta", "time": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
                              "openvino_genai": ov.get_version(), "python": platform.python_version(),
                              "machine": platform.machine(), "samples_args": data["args"]}) + "\n")  # fmt: skip
        for keep in keeps:
            sc, size = None, None
            if keep < 1.0:
                n = data["rows"][0]["context_tokens"]
                size = max(args.start + args.recent + 32, round(keep * n / 32) * 32)  # blocks of 32 tokens
                sc = ov.SchedulerConfig()
                sc.use_cache_eviction = True
                sc.cache_eviction_config = ov.CacheEvictionConfig(
                    start_size=args.start, recent_size=args.recent, max_cache_size=size,
                    aggregation_mode=ov.AggregationMode.NORM_SUM,
                )  # fmt: skip
            pipe = ov.LLMPipeline(args.gguf, "CPU", scheduler_config=sc) if sc else ov.LLMPipeline(args.gguf, "CPU")
            for row in data["rows"]:
                key = json.dumps([keep, row["index"], row["question"]])
                if key in done:
                    continue
                cfg = ov.GenerationConfig()
                cfg.max_new_tokens = row["max_new_tokens"]
                cfg.apply_chat_template = False  # the prompt carries the chat template already
                t = time.perf_counter()
                err, text = None, ""
                try:
                    text = str(pipe.generate(row["prompt"], cfg))
                except Exception as e:  # recorded: the row says the engine refused
                    err = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                out.write(json.dumps({"type": "row", "key": key, "keep": keep, "index": row["index"],
                                      "question": row["question"], "answer": text, "error": err, "q": row["q"],
                                      "max_cache_size": size if sc else None,
                                      "seconds": time.perf_counter() - t}) + "\n")  # fmt: skip
                out.flush()


if __name__ == "__main__":
    main()
