"""Explanation benchmark: needle recall, faithfulness and seconds per explanation for every method on the
bench's retrieval tasks (the target is the true answer, a given continuation, so the needles are ground truth).

The protocol (issue 26, item 8): two tasks, ``niah_single`` (one needle; its value's probability saturates: the
top 1% of any good ranking removes nearly all of it) and ``niah_multivalue`` (one key, four values in four
needles: the target is every value, in context order, joined as the task's ``recall`` scorer reads them, so
each needle carries only part of the target); 20 samples at 512 tokens and 10 at 2048; faithfulness at both;
``--n-random 8`` random rankings per problem (the same for every method on it); every method on every sample,
integrated gradients included:

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/explain/explain_bench.py \
        --tasks niah_single niah_multivalue --lengths 512 2048 --samples 20 10 --faith-lengths 512 2048 \
        --n-random 8 --out benchmarks/explain/results/protocol2

``--target logprob`` explains the mean per-token log-probability of the answer instead of its probability
(unbounded below, so it cannot saturate at 0). Smoke run (one sample, every method, a minute or two):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain/explain_bench.py --tasks niah_multivalue \
        --lengths 256 --samples 1 --faith-lengths 256 --n-random 2 --out /tmp/explain_smoke

Writes ``rows.jsonl`` (one row per sample x method: the figures, the random reference's mean and its spread
between draws ``*_random_sd``, the saturation ``saturation@1`` / ``saturation@1_random``), ``summary.json`` (means
with 95% t intervals), ``summary.md`` (``explain_table.py``'s tables: paired-bootstrap ratios against random per
task and length, the computed "beats random" column, the saturation table, the methods' settings) and
``plots.png`` under ``--out``. A rerun into the same ``--out`` keeps the samples it already has (every method's
row present) and runs the rest. Speed is timed on this machine in this run (single thread). ReAGent, occlusion
and integrated gradients run at the settings in ``DEFAULT``; their figures hold at these settings only.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

import tokensieve
from tokensieve.explain import Problem, get_explainer, make_problem
from tokensieve.explain import faithfulness as faith
from tokensieve.measure.tasks import Sample, get_task
from tokensieve.stats import t_interval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import run_provenance, stamp, write_table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # explain_table.py beside this file
from explain_table import plot, table_rows

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


def answer_items(sample: Sample) -> list[str]:
    """The first question's items in the order they appear in the context (the order a reader lists them)."""
    items = [it.text for it in sample.questions[0].items]
    return sorted(items, key=lambda t: (sample.context.find(t), items.index(t)))


def answer_text(items: list[str]) -> str:
    """The continuation explained: the items joined as a list (one item: itself), which the task's scorer
    (``contains`` / ``recall``, whole words) scores 1."""
    return ", ".join(items)


def build(model, tok, sample: Sample, measure: str = "prob") -> tuple[Problem, Tensor, str]:
    """The problem (target: the true answer as a continuation), its needle mask over every item, the answer."""
    q = sample.questions[0]
    items = answer_items(sample)
    answer = answer_text(items)
    problem, offsets = make_problem(
        model, tok, sample.context, q.text, continuation=" " + answer, answer_prefix=q.answer_prefix
    )
    problem.target = replace(problem.target, measure=measure)  # replace() validates the measure
    return problem, faith.needle_mask(sample.context, offsets, items), answer


def per_length(lengths: list[int], samples: list[int]) -> dict[int, int]:
    """``--samples``: one count for every length, or one per length."""
    if len(samples) == 1:
        return dict.fromkeys(lengths, samples[0])
    if len(samples) != len(lengths):
        raise SystemExit(f"--samples: one count, or one per length ({len(lengths)}), got {len(samples)}")
    return dict(zip(lengths, samples, strict=True))


def explain_problem(
    problem: Problem,
    needle: Tensor,
    methods: list[str],
    faithfulness: bool,
    n_random: int,
    soft_samples: int,
    seed: int,
) -> list[dict]:
    """One row per method: seconds, needle recall and (``faithfulness``) the figures against ``n_random``
    random rankings, which every method on this problem shares (``seed``)."""
    rows, scores = [], {}
    for m in methods:
        e = get_explainer(m, **DEFAULT.get(m, {}))
        start = time.perf_counter()
        scores[m] = e.attribute(problem).float()
        sec = time.perf_counter() - start
        rows.append(
            {
                "method": m,
                "params": DEFAULT.get(m, {}),
                "seconds": sec,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "needle_tokens": int(needle.sum()),
                **faith.needle_recall(scores[m], needle),
            }
        )
        print(f"  {m}: {sec:.1f} s, recall@5 {rows[-1]['needle_recall@5']:.2f}", file=sys.stderr, flush=True)
    if faithfulness:
        start = time.perf_counter()
        fr = faith.evaluate(problem, scores, n_random=n_random, samples=soft_samples, seed=seed)
        print(f"  faithfulness {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for row in rows:
            row.update(fr[row["method"]])
    agree = faith.agreement(scores)
    for row in rows:
        row["agreement"] = [a for a in agree if row["method"] in (a["a"], a["b"])]
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tasks", nargs="+", default=["niah_single", "niah_multivalue"])
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--samples", nargs="+", type=int, default=[1], help="one count, or one per length")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT))
    p.add_argument("--first", type=int, default=0, help="skip sample indices below this (split a run across processes)")
    p.add_argument("--faith-lengths", nargs="*", type=int, default=[], help="lengths with faithfulness measured")
    p.add_argument("--n-random", type=int, default=8, help="random rankings per problem (the reference)")
    p.add_argument("--soft-samples", type=int, default=2)
    p.add_argument("--target", choices=["prob", "logprob"], default="prob", help="the target quantity")
    p.add_argument("--out", default="benchmarks/explain/results/run")
    p.add_argument("--summarize", action="store_true", help="only rebuild the summary from --out's rows.jsonl")
    args = p.parse_args()
    counts = per_length(args.lengths, args.samples)
    if args.n_random < 1:
        raise SystemExit(f"--n-random must be >= 1, got {args.n_random}")
    unknown = [m for m in args.methods if m not in DEFAULT]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; one of {', '.join(DEFAULT)}")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
        summarize(rows, args, out)
        return 0
    tasks = [get_task(spec) for spec in args.tasks]  # a bad spec fails before the model loads
    model, tok = tokensieve.load_model(args.model)
    # resumable: a sample whose rows are all in rows.jsonl (same task, length, index and target) is not rerun
    path = out / "rows.jsonl"
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    done = {
        key
        for key in {(r["task"], r["length"], r["index"], r["target_measure"]) for r in kept}
        if set(args.methods)
        <= {r["method"] for r in kept if (r["task"], r["length"], r["index"], r["target_measure"]) == key}
    }
    rows = [r for r in kept if (r["task"], r["length"], r["index"], r["target_measure"]) in done]
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()  # the kept rows are on disk before the first new sample: a run stopped early loses none
        for spec, task in zip(args.tasks, tasks, strict=True):
            for n in args.lengths:
                for index in range(args.first, counts[n]):
                    if (spec, n, index, args.target) in done:
                        continue
                    sample = task.sample(tok, n, index)
                    problem, needle, answer = build(model, tok, sample, args.target)
                    print(f"{spec} {n} #{index}: {problem.n_context} tokens", file=sys.stderr, flush=True)
                    head = {
                        "task": spec,
                        "n_tokens": problem.n_context,
                        "length": n,
                        "index": index,
                        "answer": answer,
                        "target_measure": args.target,
                        "target": None,
                    }
                    found = explain_problem(
                        problem, needle, args.methods, n in args.faith_lengths, args.n_random, args.soft_samples, index
                    )
                    for row in found:
                        row = stamp({**head, **row})
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
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
    "comprehensiveness_random",
    "comprehensiveness_random_sd",
    "comprehensiveness_ratio",
    "sufficiency",
    "sufficiency_ratio",
    "soft_nc",
    "soft_ns",
    "saturation@1",
    "saturation@1_random",
    "target",
    "peak_rss_mb",
)


def summarize(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    """``summary.json``: per task, method and length, each field's mean and t half-width (a description of
    the rows); ``summary.md``: ``explain_table``'s tables, where the claims (ratios against random and the
    "beats random" column) come from ``tokensieve.stats``' paired bootstrap."""
    summary = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for m in dict.fromkeys(r["method"] for r in rows):
            for n in sorted({r["length"] for r in rows}):
                sel = [r for r in rows if r["task"] == task and r["method"] == m and r["length"] == n]
                if not sel:
                    continue
                entry = {"task": task, "method": m, "length": n, "samples": len(sel)}
                for k in FIELDS:
                    mean, half, cnt = ci([r[k] for r in sel if r.get(k) is not None])
                    if cnt:
                        entry[k] = {"mean": mean, "ci95": half, "n": cnt}
                summary.append(entry)
    command = " ".join(sys.argv)
    record = {"command": command, "provenance": run_provenance(), "rows": summary}
    (out / "summary.json").write_text(json.dumps(record, indent=1))
    n_random = sorted({r["n_random"] for r in rows if "n_random" in r})
    head = [f"command: `{command}`", ""]
    if n_random:
        head += [f"Random reference: {'/'.join(map(str, n_random))} random rankings per problem.", ""]
    write_table(out / "summary.md", head + table_rows(rows))
    plot([str(out)], out / "plots.png")  # the house plot of explain_table.py, this run's rows only


if __name__ == "__main__":
    raise SystemExit(main())
