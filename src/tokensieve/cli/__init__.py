"""Command line: ``tokensieve methods | generate | calibrate | sinks | decode | demo | bench | vision | explain |
train | quantize``. Each family's commands live in their own module; this one builds the parser and runs it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tokensieve.cli import consumers, kv
from tokensieve.errors import TokenSieveError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokensieve", description="Token importance for Hugging Face models.")
    sub = p.add_subparsers(dest="command", required=True)
    kv.add_parsers(sub)
    consumers.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TokenSieveError as e:
        print(f"tokensieve: error: {e}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
