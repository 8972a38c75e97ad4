"""Argument types and shared options of the command line (one-line errors, exit 2)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tokensieve.errors import TokenSieveError

# rich falls back to 80 columns off a terminal; tables of answers want more
console = Console(width=shutil.get_terminal_size((150, 40)).columns)


def _keep(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep takes a fraction in (0, 1], not {text!r}") from None


def _add_page_args(parser: argparse.ArgumentParser) -> None:
    """``--pages P`` (+ layout, aggregation): evict whole pages of P tokens, as a paged serving engine must."""
    parser.add_argument("--pages", type=int, metavar="P", help="evict whole pages of P tokens (e.g. 16)")
    parser.add_argument("--page-layout", choices=["layer", "head"], help="pages shared by a layer's KV heads (default)")
    parser.add_argument("--page-agg", choices=["max", "mean"], help="a page's score from its tokens' (default max)")


def _page_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The page options as keywords, validated (a bad one exits 2 before the model loads)."""
    from tokensieve.kv import Paging

    kw = {"pages": args.pages, "page_layout": args.page_layout, "page_agg": args.page_agg}
    kw = {k: v for k, v in kw.items() if v is not None}
    Paging.pop(dict(kw))
    return kw


def _context(args: argparse.Namespace) -> str:
    """The context text (never empty)."""
    if args.context_file is not None:
        path = Path(args.context_file)
        if not path.is_file():
            raise TokenSieveError(f"context file {str(path)!r} does not exist: pass a readable text file")
        text = path.read_text(encoding="utf-8")
    else:
        text = args.context
    if not text.strip():
        raise TokenSieveError("the context is empty: pass --context TEXT or --context-file PATH with text in it")
    return text


def _read(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:  # a count of tokens has its own flag, so `--read 2` is not silently 2 tokens
        raise argparse.ArgumentTypeError(
            f"--read takes a fraction in (0, 1] such as 0.125, not {text!r} (for a token count use --read-tokens N)"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a positive whole number, not {text!r}")
    return value


def print_answer_record(record: dict[str, Any], as_json: bool) -> int:
    """``generate``'s output, from either engine: one JSON line, or the answer then one line per field."""
    if as_json:
        print(json.dumps(record))
    else:
        console.print(f"[bold]answer:[/bold] {escape(str(record['answer']))}")
        for k, v in record.items():
            if k != "answer":
                console.print(f"  {k}: {v}")
    return 0
