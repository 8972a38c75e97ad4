"""The learned scorers (kvzap, fastkvzip) against kvzip, question unseen: this folder's `tokensieve bench` rows and
kvzip's rows on the same samples (task, length, sample index, seed; the same corpus fingerprint), as a share of
kvzip's score with a paired bootstrap ratio, and each method's compression seconds over its prefill's seconds (same
run). Training figures come from the `tokensieve calibrate --learned --json` record.

    .venv/bin/python benchmarks/learned/summary.py benchmarks/learned/results/test_2048/results.jsonl \
        --train benchmarks/learned/results/train_smollm2.json --out benchmarks/learned/results/summary_2048

``--kvzip`` takes kvzip's rows from another run on the same samples (default: the same run, which is how the
timing ratios compare in one run). With more than one task, "all tasks" pools their samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py

from _common import command, write_results

from tokensieve.measure.bench.report import Results
from tokensieve.stats import paired_bootstrap, wilson


def cells(path: Path) -> tuple[dict, list[dict]]:
    res = Results.load(path)  # a rerun cell replaces the old one; failed cells apart
    return res.meta[-1], [c for c in res.cells if c["engine"] == "tokensieve"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", type=Path)
    p.add_argument(
        "--kvzip", type=Path, help="a bench results.jsonl holding kvzip on the same samples (default: RESULTS)"
    )
    p.add_argument("--train", type=Path, help="the calibrate --learned --json record")
    p.add_argument("--out", type=Path, default=Path("benchmarks/learned/results/summary_2048"))
    p.add_argument("--title", default="Learned scorers", help="what the methods are, for the heading")
    args = p.parse_args()
    args.kvzip = args.kvzip or args.results
    meta, mine = cells(args.results)
    ref_meta, ref = cells(args.kvzip)
    if meta.get("corpus") != ref_meta.get("corpus"):
        raise SystemExit(f"corpus {meta.get('corpus')} != {ref_meta.get('corpus')}: not the same samples")
    by = defaultdict(dict)  # (task, method, keep) -> {(task, length, sample, seed): row}
    # kvzip from another run: its full-cache row is that run's, kept apart from this run's
    other = (
        [] if args.kvzip.resolve() == args.results.resolve() else [r for r in ref if r["method"] in ("kvzip", "full")]
    )
    tagged = [(r, r["method"]) for r in mine] + [
        (r, "full (kvzip's run)" if r["method"] == "full" else "kvzip") for r in other
    ]
    tasks = sorted({r["task"] for r in mine})
    for r, name in tagged:
        key = (r["task"], r["length"], r["sample"], r["seed"])
        by[(r["task"], name, r["keep"])][key] = r
        if len(tasks) > 1:  # every task's samples pooled: the retrieval score the goals name
            by[("all tasks", name, r["keep"])][key] = r
    tasks += ["all tasks"] if len(tasks) > 1 else []
    methods = sorted({k[1] for k in by if k[1] not in ("kvzip", "full", "full (kvzip's run)")})
    lines = [
        f"# {args.title} vs kvzip, {meta['model']}, question unseen, {', '.join(tasks)}, {meta['lengths']} tokens",
        "",
        "compress s / prefill s: a pass that every keep of a sample shares (kvzip's reconstruction, for"
        " example) is charged to the first keep the bench ran (the largest); the other keeps show their"
        " selection only.",
        "",
    ]
    rows_out = []
    for task in tasks:
        full = by[(task, "full", 1.0)]
        lines += [
            f"## {task}: n = {len(full)} samples" + (f" (kvzip from {args.kvzip}, same samples)" if other else ""),
            "",
            "| method | keep | right (95% Wilson) | % of kvzip (paired bootstrap) | % of full (paired bootstrap) |"
            " compress s / prefill s |",
            "|---|---|---|---|---|---|",
        ]
        n_full = sum(r["score"] for r in full.values())
        lines.append(f"| full | 1.0 | {n_full:.0f}/{len(full)} | | | |")
        for keep in sorted({k[2] for k in by if k[0] == task and k[2] < 1}, reverse=True):
            kz = by[(task, "kvzip", keep)]
            for method in ["kvzip", *methods]:
                got = by.get((task, method, keep), {})
                ids = sorted(set(got) & set(kz) & set(full))
                if not ids:
                    continue
                a = [got[i]["score"] for i in ids]
                b = [kz[i]["score"] for i in ids]
                f = [full[i]["score"] for i in ids]
                w = wilson(sum(a), len(a))
                vs_kvzip = paired_bootstrap(a, b, ratio=True) if method != "kvzip" else None
                vs_full = paired_bootstrap(a, f, ratio=True)
                cost = [got[i]["compress_seconds"] / got[i]["prefill_seconds"] for i in ids]
                ratio = sum(cost) / len(cost)
                shown = "" if vs_kvzip is None else f"{vs_kvzip.estimate:.0%} [{vs_kvzip.lo:.0%}, {vs_kvzip.hi:.0%}]"
                src = " (kvzip's run)" if method == "kvzip" and other else ""
                of_full = f"{vs_full.estimate:.0%} [{vs_full.lo:.0%}, {vs_full.hi:.0%}]"
                lines.append(f"| `{method}`{src} | {keep} | {sum(a):.0f}/{len(a)} [{w.lo:.2f}, {w.hi:.2f}] | {shown} |"
                             f" {of_full} | {ratio:.3f} |")  # fmt: skip
                of_kvzip = None if vs_kvzip is None else [vs_kvzip.estimate, vs_kvzip.lo, vs_kvzip.hi]
                rows_out.append({"task": task, "method": method, "keep": keep, "n": len(a), "right": sum(a),
                                 "of_kvzip": of_kvzip, "of_full": [vs_full.estimate, vs_full.lo, vs_full.hi],
                                 "compress_over_prefill": ratio})  # fmt: skip
        lines.append("")
    if args.train and args.train.exists():
        lines += ["## Training (this CPU, shared)", "",
                  "| form | texts (val) | train tokens | val tokens | kvzip pass s | fit s | total s | val r |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        record = json.loads(args.train.read_text())
        for t in record if isinstance(record, list) else [record]:
            head = f"| {t['form']} | {t['texts']} ({t['val_texts']}) | {t['train_tokens']} | {t['val_tokens']} |"
            tail = f" {t['collect_seconds']} | {t['fit_seconds']} | {t['train_seconds']} | {t['val_r_mean']} |"
            lines.append(head + tail)
        lines.append("")
    write_results(args.out, rows_out, lines, command("learned/summary.py", args, positional=("results",)))


if __name__ == "__main__":
    main()
