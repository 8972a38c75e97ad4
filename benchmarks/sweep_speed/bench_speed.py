"""How fast is ``tokensieve bench``? The sweep against one full-cache pass, against one prefill per cell
(naive), and kvpress's wall time for the same cells. Run it on a quiet machine:

    .venv/bin/python benchmarks/sweep_speed/bench_speed.py --out benchmarks/sweep_speed/results

Four runs of the bench runner on the same fixed samples (default: one fidelity and one niah_single sample
at 1024 and 2048 tokens, every prefill-eviction method plus the kvpress-matched specs, keep 0.5/0.25/0.1,
one thread), each into its own folder under --out:

- ``full``: the full cache only: one plain prefill plus the full cache's evaluation per sample;
- ``sweep``: every cell from one shared prefill per sample, cells evaluated in batches (the bench);
- ``unbatched``: the sweep with every cell evaluated alone (``--max-batch 1``);
- ``naive``: every cell from its own prefill (``tokensieve.compress``), evaluated alone;
- ``sweep`` also runs the kvpress presses (its own pipeline, one prefill per cell) on the same samples.

``speed.md`` in --out gives per length: seconds per sample of each, the sweep-cost ratio (sweep ÷ full
pass), the saving (naive ÷ sweep), and per kvpress press the wall time per cell against tokensieve's
one-shot cell (prefill + compress + evaluation, no reuse) and against its amortized sweep cell.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from tokensieve.measure.bench.methods import MethodSpec, default_methods, parse_presses
from tokensieve.measure.bench.report import Results, fmt, mean
from tokensieve.measure.bench.runner import Config, parse_floats, parse_ints, run
from tokensieve.measure.tasks import expand_tasks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_table


def configs(args: argparse.Namespace) -> dict[str, Config]:
    presses = parse_presses(args.presses) if args.presses != "none" else []
    methods = default_methods()
    have = {m.label for m in methods}
    for p in presses:
        for spec in (p.matched, p.nominal):
            if spec and spec not in have:
                methods.append(MethodSpec.parse(spec))
                have.add(spec)
    out = Path(args.out)
    common = dict(
        tasks=expand_tasks(args.tasks),
        lengths=parse_ints(args.lengths),
        keeps=parse_floats(args.keep),
        samples=args.samples,
        model=args.model,
        threads=args.threads,
        kvpress_python=args.kvpress_python,
    )
    return {
        "full": Config(methods=[], out=out / "full", **common),
        "sweep": Config(methods=methods, out=out / "sweep", presses=presses, **common),
        "unbatched": Config(methods=methods, out=out / "unbatched", max_batch=1, **common),
        "naive": Config(methods=methods, out=out / "naive", naive=True, **common),
    }


def _load(folder: Path) -> Results:
    path = folder / "results.jsonl"
    return Results.load(path) if path.exists() else Results([], [], [])


def per_sample(res: Results, engine: str) -> dict[int, list[float]]:
    by: dict[int, list[float]] = defaultdict(list)
    for s in res.samples:
        if s["engine"] == engine:
            by[s["length"]].append(s["wall_seconds"])
    return by


def report(out: Path, command: str) -> Path:
    full = _load(out / "full")
    sweep = _load(out / "sweep")
    naive = _load(out / "naive")
    unbatched = _load(out / "unbatched")
    f, s, n = per_sample(full, "tokensieve"), per_sample(sweep, "tokensieve"), per_sample(naive, "tokensieve-naive")
    u = per_sample(unbatched, "tokensieve")
    cells = defaultdict(list)
    for rec in sweep.samples:
        if rec["engine"] == "tokensieve":
            cells[rec["length"]].append(rec["cells"])
    threads = {m.get("threads") for m in sweep.meta}
    lines = [
        "# tokensieve bench: speed of the sweep",
        "",
        "Produced by:",
        "",
        f"    {command}",
        "",
        f"Threads: {', '.join(map(str, threads))}. Seconds are wall time per sample (the sample's every cell), mean",
        "over the samples. `full pass`: one plain prefill and the full cache's evaluation. `sweep`: the bench (one",
        "shared prefill with every method's observations, every compression, batched evaluation). `naive`: one",
        "prefill per cell, each cell evaluated alone. `unbatched`: the sweep with every cell evaluated alone",
        "(`--max-batch 1`), which shows what stacking cells into one batch saves.",
        "",
        "| length | samples | cells/sample | full pass s | sweep s | unbatched sweep s | naive s | sweep ÷ full pass | "
        "naive ÷ sweep |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in sorted(s):
        fs, ss, ns, us = (mean(x.get(length, [])) for x in (f, s, n, u))
        lines.append(
            f"| {length} | {len(s[length])} | {fmt(mean(cells[length]), 0)} | {fmt(fs, 2)} | {fmt(ss, 2)} | "
            f"{fmt(us, 2)} | {fmt(ns, 2)} | {fmt(ss / fs, 2)} | {fmt(ns / ss, 1)} |"
        )
    # kvpress: wall per cell against tokensieve's cells for the matched specs
    from tokensieve.measure.bench.methods import PRESSES

    kv = sweep.select(engine="kvpress")
    one_shot = {(c["task"], c["length"], c["sample"], c["method"], c["keep"]): c for c in naive.cells}
    sweep_cost = {
        (r["task"], r["length"], r["sample"]): r["wall_seconds"] / max(1, r["cells"])
        for r in sweep.samples
        if r["engine"] == "tokensieve"
    }
    if kv:
        lines += [
            "",
            "kvpress against tokensieve on the same cells (wall seconds per cell, mean over samples and keeps).",
            "kvpress prefills once per cell through its own pipeline; `one-shot` is tokensieve's `compress` +",
            "evaluation for the matched spec, also one prefill per cell; `in sweep` is the sample's sweep time",
            "divided by its cells. Peak RSS is the process's high-water mark during the cell (model included; the",
            "kvpress worker is its own process, tokensieve's one-shot cells run in the bench process, which by then",
            "holds the heap of every earlier run in it, so its figure is that process's floor, not the cell's: for",
            "per-method peak RSS from fresh processes see benchmarks/kv_cost/results/core_smollm2.md).",
            "",
            "| length | press | matched spec | kvpress s/cell | tokensieve one-shot s/cell | ratio | "
            "tokensieve in sweep s/cell | ratio | kvpress peak RSS MiB | tokensieve one-shot peak RSS MiB |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        groups = defaultdict(list)
        for c in kv:
            groups[(c["length"], c["method"])].append(c)
        for (length, method), cs in sorted(groups.items()):
            name = method.split(":", 1)[-1]
            spec = "full" if method == "full" else (PRESSES[name].matched if name in PRESSES else None)
            kv_s = mean(c["wall_seconds"] for c in cs)
            kv_rss = mean(c["rss_peak"] / 2**20 for c in cs if c.get("rss_peak"))
            if spec is None:
                lines.append(f"| {length} | {method} | - | {fmt(kv_s, 2)} | - | - | - | - | {fmt(kv_rss)} | - |")
                continue
            mine = [one_shot.get((c["task"], c["length"], c["sample"], spec, c["keep"])) for c in cs]
            os_s = mean(m["prefill_seconds"] + m["compress_seconds"] + m["eval_seconds"] for m in mine if m is not None)
            sw_s = mean(sweep_cost[(c["task"], c["length"], c["sample"])] for c in cs)
            ts_rss = mean(m["rss_peak"] / 2**20 for m in mine if m is not None and m.get("rss_peak"))
            lines.append(
                f"| {length} | {method} | {spec} | {fmt(kv_s, 2)} | {fmt(os_s, 2)} | {fmt(kv_s / os_s, 2)}x | "
                f"{fmt(sw_s, 2)} | {fmt(kv_s / sw_s, 1)}x | {fmt(kv_rss)} | {fmt(ts_rss)} |"
            )
        all_kv = mean(c["wall_seconds"] for c in kv if c["method"] != "full")
        all_sw = mean(sweep_cost[(c["task"], c["length"], c["sample"])] for c in kv if c["method"] != "full")
        lines += [
            "",
            f"Over every compressed kvpress cell: kvpress {fmt(all_kv, 2)} s/cell, tokensieve sweep "
            f"{fmt(all_sw, 2)} s/cell: **{fmt(all_kv / all_sw, 1)}x**.",
        ]
    path = out / "speed.md"
    write_table(path, lines)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tasks", default="fidelity,niah_single")
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--keep", default="0.5,0.25,0.1")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--presses", default="all", help="kvpress presses, or 'none'")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kvpress-python", default=None)
    p.add_argument("--out", default="benchmarks/sweep_speed/results")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    command = ".venv/bin/python benchmarks/sweep_speed/bench_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.report_only:
        for name, cfg in configs(args).items():
            print(f"[bench_speed] {name}", flush=True)
            run(cfg, command=command)
    print(report(Path(args.out), command).read_text())


if __name__ == "__main__":
    main()
