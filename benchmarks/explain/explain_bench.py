"""Explanation benchmark: needle recall, faithfulness and seconds per explanation for every method on the
bench's retrieval tasks (the target is the true answer, a given continuation, so the needle is ground truth).

OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/explain/explain_bench.py --lengths 256 --samples 3 \
    --faith-lengths 256 --out benchmarks/explain/results/quality
Writes ``rows.jsonl`` (one row per sample x method), ``summary.json`` / ``summary.md`` (means with 95% t
intervals) and ``plots.png`` under ``--out``. Speed is timed on this machine in this run (single thread).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

import tokensieve
from tokensieve.explain import faithfulness as faith
from tokensieve.explain import get_explainer, make_problem
from tokensieve.measure.tasks import get_task
from tokensieve.stats import t_interval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import run_provenance, stamp, write_table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # explain_table.py beside this file
from explain_table import plot

DEFAULT = {
    "attention": {},
    "rollout": {},
    "grad_x_input": {},
    "snapkv": {},
    "h2o": {},
    "tova": {},
    "occlusion": {"width": 32},
    "integrated_gradients": {"steps": 4},
    "reagent": {"max_steps": 5},
}


def ci(xs: list[float]) -> tuple[float, float, int]:
    """Mean and the half-width of a 95% Student-t interval over samples (nan for one sample; nan values dropped)."""
    iv = t_interval(xs)
    return iv.estimate, iv.half, iv.n


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tasks", nargs="+", default=["niah_single"])
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048])
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT))
    p.add_argument("--faith-lengths", nargs="*", type=int, default=[], help="lengths with faithfulness measured")
    p.add_argument("--soft-samples", type=int, default=2)
    p.add_argument("--out", default="benchmarks/explain/results/run")
    p.add_argument("--summarize", action="store_true", help="only rebuild the summary from --out's rows.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
        summarize(rows, args, out)
        return 0
    model, tok = tokensieve.load_model(args.model)
    rows = []
    with open(out / "rows.jsonl", "w") as f:
        for spec in args.tasks:
            task = get_task(spec)
            for n in args.lengths:
                for index in range(args.samples):
                    s = task.sample(tok, n, index)
                    q = s.questions[0]
                    answer = " ".join(it.text for it in q.items)
                    problem, offsets = make_problem(
                        model, tok, s.context, q.text, continuation=" " + answer, answer_prefix=q.answer_prefix
                    )
                    needle = faith.needle_mask(s.context, offsets, [it.text for it in q.items])
                    scores = {}
                    for m in args.methods:
                        e = get_explainer(m, **DEFAULT.get(m, {}))
                        start = time.perf_counter()
                        scores[m] = e.attribute(problem).float()
                        sec = time.perf_counter() - start
                        row = {
                            "task": spec,
                            "n_tokens": problem.n_context,
                            "length": n,
                            "index": index,
                            "method": m,
                            "params": DEFAULT.get(m, {}),
                            "seconds": sec,
                            "target": None,
                            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                            **faith.needle_recall(scores[m], needle),
                        }
                        rows.append(row)
                        print(
                            f"{spec} {n} #{index} {m}: {sec:.1f} s, recall@5 {row['needle_recall@5']:.2f}",
                            file=sys.stderr,
                            flush=True,
                        )
                    if n in args.faith_lengths:
                        start = time.perf_counter()
                        fr = faith.evaluate(problem, scores, n_random=1, samples=args.soft_samples, seed=index)
                        print(f"  faithfulness {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                        for row in rows[-len(args.methods) :]:
                            row.update(fr[row["method"]])
                    agree = faith.agreement(scores)
                    for row in rows[-len(args.methods) :]:
                        row["agreement"] = [a for a in agree if row["method"] in (a["a"], a["b"])]
                        f.write(json.dumps(stamp(row)) + "\n")
                    f.flush()
    summarize(rows, args, out)
    return 0


FIELDS = (
    "seconds",
    "needle_recall@1",
    "needle_recall@5",
    "needle_recall@10",
    "needle_top1",
    "comprehensiveness",
    "comprehensiveness_ratio",
    "sufficiency",
    "sufficiency_ratio",
    "soft_nc",
    "soft_ns",
    "peak_rss_mb",
)


def summarize(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    summary = []
    for m in args.methods:
        for n in args.lengths:
            sel = [r for r in rows if r["method"] == m and r["length"] == n]
            if not sel:
                continue
            entry = {"method": m, "length": n, "samples": len(sel)}
            for k in FIELDS:
                mean, half, cnt = ci([r[k] for r in sel if k in r])
                if cnt:
                    entry[k] = {"mean": mean, "ci95": half, "n": cnt}
            summary.append(entry)
    record = {"command": " ".join(sys.argv), "provenance": run_provenance(), "rows": summary}
    (out / "summary.json").write_text(json.dumps(record, indent=1))
    cols = [k for k in FIELDS if any(k in e for e in summary)]
    lines = [
        f"command: `{' '.join(sys.argv)}`",
        "",
        "| method | length | n | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for e in summary:
        cells = [f"{e[k]['mean']:.3g} ± {e[k]['ci95']:.2g}" if k in e else "" for k in cols]
        lines.append(f"| {e['method']} | {e['length']} | {e['samples']} | " + " | ".join(cells) + " |")
    write_table((out / "summary.md"), lines)
    plot([str(out)], out / "plots.png")  # the house plot of explain_table.py, this run's rows only


if __name__ == "__main__":
    raise SystemExit(main())
