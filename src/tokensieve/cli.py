"""Command line: ``tokensieve methods | generate | decode | demo``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import TokenSieveError

# rich falls back to 80 columns off a terminal; tables of answers want more
console = Console(width=shutil.get_terminal_size((150, 40)).columns)


def _param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method parameter {text!r} must look like name=value")
    name, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, value


def _keep(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep takes a fraction in (0, 1], not {text!r}") from None


def cmd_methods(args: argparse.Namespace) -> int:
    from .catalog import describe_all

    rows = describe_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="tokensieve methods")
    for col in ("id", "kind", "paper", "rule"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["id"], r["kind"], escape(r["paper"]), escape(r["rule"]))
    console.print(table)
    return 0


def _context(args: argparse.Namespace) -> str:
    if args.context_file is not None:
        path = Path(args.context_file)
        if not path.is_file():
            raise TokenSieveError(f"context file {str(path)!r} does not exist: pass a readable text file")
        return path.read_text(encoding="utf-8")
    return args.context


def cmd_generate(args: argparse.Namespace) -> int:
    from .act.compress import Plan
    from .models import load_model
    from .pipeline import generate

    params = dict(args.param or [])
    # fail fast on a bad method, parameter or keep, before loading the model
    Plan.make(args.method, keep=args.keep, budget=args.budget, allocator=args.allocator, **params)
    context = _context(args)
    if not context.strip():
        raise TokenSieveError("the context is empty: pass --context TEXT or --context-file PATH with text in it")
    model, tok = load_model(args.model)
    ans = generate(
        model,
        tok,
        context,
        args.question,
        args.method,
        keep=args.keep,
        budget=args.budget,
        allocator=args.allocator,
        query_aware=args.query_aware,
        max_new_tokens=args.max_new_tokens,
        answer_prefix=args.answer_prefix,
        **params,
    )
    s = ans.stats
    record = {
        "answer": ans.text,
        "method": ans.method,
        "keep": ans.keep,
        "budget": ans.budget,
        "allocator": args.allocator,
        "query_aware": ans.query_aware,
        "model": str(args.model),
        "context_tokens": s.context_tokens,
        "kv_bytes_full": s.kv_bytes_full,
        "kv_bytes": s.kv_bytes,
        "kv_ratio": round(s.ratio, 4),
        "prefill_seconds": round(s.prefill_seconds, 4),
        "compress_seconds": round(s.compress_seconds, 4),
        "decode_seconds": round(s.decode_seconds, 4),
        "new_tokens": s.new_tokens,
    }
    if args.json:
        print(json.dumps(record))
    else:
        console.print(f"[bold]answer:[/bold] {escape(ans.text)}")
        for k, v in record.items():
            if k != "answer":
                console.print(f"  {k}: {v}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .decoding import decode, family_of
    from .models import load_model

    params = dict(args.param or [])
    family = family_of(args.method)  # fail fast on a bad method before loading the model
    if family == "decode eviction" and args.budget is None:
        raise TokenSieveError(f"decode eviction with {args.method} needs --budget N (tokens held per KV head)")
    if family != "decode eviction" and (args.budget is not None or args.prefill is not None):
        raise TokenSieveError(f"--budget / --prefill apply to decode eviction, not to {family} ({args.method})")
    if family != "sparse decoding" and args.read is not None:
        raise TokenSieveError(f"--read applies to sparse decoding, not to {family} ({args.method})")
    context = _context(args)
    if not context.strip():
        raise TokenSieveError("the context is empty: pass --context TEXT or --context-file PATH with text in it")
    model, tok = load_model(args.model)
    ans = decode(
        model,
        tok,
        context,
        args.question,
        args.method,
        budget=args.budget,
        read=args.read,
        prefill=args.prefill,
        prefill_keep=args.prefill_keep,
        max_new_tokens=args.max_new_tokens,
        answer_prefix=args.answer_prefix,
        measure=args.measure,
        **params,
    )
    record = {"answer": ans.text, "model": str(args.model), **ans.stats.as_dict()}
    if args.json:
        print(json.dumps(record, default=str))
    else:
        console.print(f"[bold]answer:[/bold] {escape(ans.text)}")
        for k, v in record.items():
            if k != "answer":
                console.print(f"  {k}: {escape(str(v))}")
    return 0


def _read(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--read takes a fraction in (0, 1] or a token count, not {text!r}") from None
    return int(value) if value > 1 and value.is_integer() else value


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model, args.method, args.keep, args.tokens, args.depth, console)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokensieve", description="Token importance for Hugging Face models.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("methods", help="list every method id with its paper and rule")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)

    g = sub.add_parser("generate", help="compress a context, then answer a question from the compressed cache")
    g.add_argument("--model", default="smollm2", help="bundled name (smollm2, gemma3-270m) or a local model dir")
    g.add_argument("--method", required=True, help="method id (see `tokensieve methods`)")
    size = g.add_mutually_exclusive_group(required=True)
    size.add_argument("--keep", type=_keep, help="fraction of context tokens to keep, in (0, 1]")
    size.add_argument("--budget", type=int, help="tokens to keep per KV head")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--context-file", help="text file holding the context")
    src.add_argument("--context", help="the context text itself")
    g.add_argument("--question", required=True)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--answer-prefix", default="", help='text that starts the answer, e.g. "The pass key is"')
    g.add_argument("--allocator", default="uniform", choices=["uniform", "pyramid"])
    g.add_argument(
        "--query-aware",
        action="store_true",
        help="compress context and question together (the question is otherwise unseen)",
    )
    g.add_argument(
        "--param",
        type=_param,
        action="append",
        metavar="NAME=VALUE",
        help="override a method parameter, e.g. --param window=64",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=cmd_generate)

    dc = sub.add_parser(
        "decode",
        help="answer with a decode-time method: eviction while generating (--budget), sparse reads (--read), "
        "or prefill pruning",
    )
    dc.add_argument("--model", default="smollm2", help="bundled name (smollm2, gemma3-270m) or a local model dir")
    dc.add_argument("--method", required=True, help="a decode-time method id (see `tokensieve methods`)")
    dc.add_argument("--budget", type=int, help="decode eviction: tokens held per KV head at every step")
    dc.add_argument("--read", type=_read, help="sparse decoding: fraction of the cache read per step (default 1/8)")
    dc.add_argument("--prefill", help="decode eviction: a prefill-eviction method that compresses the prompt first")
    dc.add_argument("--prefill-keep", type=_keep, help="the prefill method's keep ratio")
    src = dc.add_mutually_exclusive_group(required=True)
    src.add_argument("--context-file", help="text file holding the context")
    src.add_argument("--context", help="the context text itself")
    dc.add_argument("--question", required=True)
    dc.add_argument("--max-new-tokens", type=int, default=32)
    dc.add_argument("--answer-prefix", default="", help='text that starts the answer, e.g. "The pass key is"')
    dc.add_argument("--measure", action="store_true", help="sparse decoding: also measure selection recall")
    dc.add_argument("--param", type=_param, action="append", metavar="NAME=VALUE", help="override a method parameter")
    dc.add_argument("--json", action="store_true", help="print one JSON object")
    dc.set_defaults(func=cmd_decode)

    d = sub.add_parser("demo", help="the main job: a pass key in ~2k tokens, compressed 4x, answered")
    d.add_argument("--model", default="smollm2")
    d.add_argument("--method", default="snapkv")
    d.add_argument("--keep", type=_keep, default=0.25)
    d.add_argument("--tokens", type=int, default=2000)
    d.add_argument("--depth", type=float, default=0.5)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TokenSieveError as e:
        print(f"tokensieve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
