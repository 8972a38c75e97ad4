"""The other consumers' commands, each delegating to its package: ``bench | vision | explain | train | quantize``."""

from __future__ import annotations

import argparse

from tokensieve.cli.args import _context, _keep, console


def cmd_bench(args: argparse.Namespace) -> int:
    from tokensieve.measure.bench.cli import run_bench

    return run_bench(args, console)


def cmd_vision(args: argparse.Namespace) -> int:
    from tokensieve.vision.cli import run_vision

    return run_vision(args, console)


def cmd_explain(args: argparse.Namespace) -> int:
    from tokensieve.explain.cli import run_explain

    return run_explain(args, console, _context(args))


def cmd_train(args: argparse.Namespace) -> int:
    from tokensieve.train.cli import run as run_train

    return run_train(args, console)


def cmd_quantize(args: argparse.Namespace) -> int:
    from tokensieve.quantize.cli import run_quantize

    return run_quantize(args, console)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from tokensieve.measure.bench.cli import add_arguments

    b = sub.add_parser("bench", help="rank methods on offline long-context tasks: prefill once, compress many")
    add_arguments(b)
    b.set_defaults(func=cmd_bench)

    from tokensieve.vision.cli import add_arguments as add_vision_arguments

    v = sub.add_parser("vision", help="prune or merge an image's patch tokens inside a ViT; FLOPs, CLS cosine")
    add_vision_arguments(v, _keep)
    v.set_defaults(func=cmd_vision)

    from tokensieve.explain.cli import add_arguments as add_explain_arguments

    ex = sub.add_parser("explain", help="which context tokens an answer rests on, with faithfulness measured")
    add_explain_arguments(ex)
    ex.set_defaults(func=cmd_explain)

    from tokensieve.train.cli import add_arguments as add_train_arguments

    t = sub.add_parser("train", help="fine-tune with a token-weighting rule on an offline reasoning task")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    from tokensieve.quantize.cli import add_arguments as add_quantize_arguments

    qz = sub.add_parser("quantize", help="quantize weights (rtn, gptq, rsq), save as safetensors, --eval vs full")
    add_quantize_arguments(qz)
    qz.set_defaults(func=cmd_quantize)
