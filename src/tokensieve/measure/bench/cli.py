"""``tokensieve bench``: arguments and the entry point (kept here so cli.py only gains a parser block)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console

from tokensieve.errors import TokenSieveError


def add_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--model", default="smollm2", help="bundled name (smollm2, gemma3-270m) or a local model dir")
    b.add_argument(
        "--tasks",
        default="all",
        help="comma list of task specs or groups (all, retrieval, fidelity), e.g. fidelity,niah_single:haystack=prose",
    )
    b.add_argument("--lengths", default="1024,2048", help="context lengths in model tokens")
    b.add_argument(
        "--methods",
        default="all",
        help="comma list of method specs id[:param=value...][@allocator]; default: every prefill-eviction method",
    )
    b.add_argument("--keep", default="0.5,0.25,0.1", help="keep ratios, comma-separated")
    b.add_argument("--samples", type=int, default=8, help="samples per task and length")
    b.add_argument("--out", required=True, help="output directory (results.jsonl, summary.md, plots)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--compare", default="", help="'kvpress': run kvpress's presses on the same samples")
    b.add_argument("--presses", default="all", help="kvpress presses to compare (default: all that correspond)")
    b.add_argument(
        "--compare-samples", type=int, default=None, help="run kvpress only on the first N samples of each task"
    )
    b.add_argument("--kvpress-python", default=None, help="python of kvpress's environment (.venv-kvpress)")
    b.add_argument(
        "--query-aware",
        action="store_true",
        help="also run retrieval with the question inside the compressed prompt (reported separately)",
    )
    b.add_argument("--threads", type=int, default=1, help="torch threads (default 1: leaves other cores free)")
    b.add_argument("--max-batch", type=int, default=8, help="cells evaluated together (1: one by one)")
    b.add_argument("--report-only", action="store_true", help="only rewrite summary.md and the plots from results")
    b.add_argument("--profile", action="store_true", help="write a cProfile of the run to OUT/profile.txt")


def build_config(args: argparse.Namespace):
    from tokensieve.errors import InvalidKeepError, check_keep
    from tokensieve.measure.bench.methods import parse_methods, parse_presses
    from tokensieve.measure.bench.runner import Config, parse_floats, parse_ints
    from tokensieve.measure.tasks import expand_tasks

    try:
        keeps = parse_floats(args.keep)
        lengths = parse_ints(args.lengths)
    except ValueError:
        raise TokenSieveError(
            f"--keep {args.keep!r} / --lengths {args.lengths!r}: give comma-separated numbers, e.g. --keep 0.5,0.25"
        ) from None
    for k in keeps:
        check_keep(k)
        if k == 1.0:
            raise InvalidKeepError("--keep 1.0 is the full cache, which every sample already runs: drop it")
    if any(n < 64 for n in lengths):
        raise TokenSieveError(f"--lengths {args.lengths!r}: contexts shorter than 64 tokens are not long-context")
    try:
        tasks = expand_tasks(args.tasks)
    except ValueError as e:
        raise TokenSieveError(str(e)) from None
    if not tasks:
        raise TokenSieveError("--tasks is empty: pass task names or a group (all, retrieval, fidelity)")
    methods = parse_methods(args.methods)
    compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    if compare and compare != ["kvpress"]:
        raise TokenSieveError(f"--compare {args.compare!r}: the only comparison is 'kvpress'")
    presses = parse_presses(args.presses) if compare else []
    if presses:  # the tokensieve specs that compute what each press computes run alongside
        have = {m.label for m in methods}
        from tokensieve.measure.bench.methods import MethodSpec

        for p in presses:
            for spec in (p.matched, p.nominal):
                if spec and spec not in have:
                    methods.append(MethodSpec.parse(spec))
                    have.add(spec)
    if args.samples < 1:
        raise TokenSieveError("--samples must be at least 1")
    return Config(
        tasks=tasks,
        lengths=lengths,
        methods=methods,
        keeps=keeps,
        samples=args.samples,
        out=Path(args.out),
        model=args.model,
        seed=args.seed,
        presses=presses,
        compare_samples=args.compare_samples,
        query_aware=args.query_aware,
        threads=args.threads,
        max_batch=max(1, args.max_batch),
        kvpress_python=args.kvpress_python,
    )


def run_bench(args: argparse.Namespace, console: Console) -> int:
    from tokensieve.measure.bench.plots import write_plots
    from tokensieve.measure.bench.report import write_summary
    from tokensieve.measure.bench.runner import run

    out = Path(args.out)
    if args.report_only:
        if not (out / "results.jsonl").exists():
            raise TokenSieveError(f"{out / 'results.jsonl'} does not exist: run the bench into --out first")
    else:
        cfg = build_config(args)
        command = "tokensieve " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if args.profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            try:
                run(cfg, Console(stderr=True), command)
            finally:
                prof.disable()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
                (out / "profile.txt").write_text(buf.getvalue())
        else:
            run(cfg, Console(stderr=True), command)
    summary = write_summary(out)
    plots = write_plots(out)
    console.print(f"[bold]summary[/bold]: {summary}")
    for p in plots:
        console.print(f"[bold]plot[/bold]: {p}")
    return 0
