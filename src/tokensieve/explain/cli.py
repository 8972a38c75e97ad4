"""`tokensieve explain`: the answer, a heatmap of the context, the verbalization and faithfulness per method."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokensieve import spec
from tokensieve.explain.result import Explanation
from tokensieve.explain.target import ExplainError

FAITH_COLUMNS = (
    "comprehensiveness",
    "comprehensiveness_ratio",
    "sufficiency",
    "sufficiency_ratio",
    "soft_nc",
    "soft_ns",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="bundled name (smollm2, gemma3-270m) or a local model dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--context-file", help="text file holding the context")
    src.add_argument("--context", help="the context text itself")
    p.add_argument("--question", required=True)
    p.add_argument("--method", action="append", help="attribution method id (repeatable; default reagent)")
    p.add_argument("--continuation", help="explain this given answer instead of the generated one")
    p.add_argument("--alternative", help="contrastive: why the answer and not this one")
    p.add_argument("--position", type=int, help="explain only this answer token (0-based)")
    p.add_argument("--answer-prefix", default="", help='text that starts the answer, e.g. "The pass key is"')
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE", help="e.g. reagent.max_steps=50")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the faithfulness measurements")
    p.add_argument("--html", help="write a self-contained HTML view here")
    p.add_argument("--show", type=int, default=240, help="context tokens shown in the console heatmap")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def parse_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--param METHOD.NAME=VALUE`` (several methods run at once): ``{method: {name: value}}``."""
    return spec.parse_params(items, scoped=True)


def heatmap(ex: Explanation, method: str, show: int) -> Text:
    """The context around the top unit, each token on a background as red as its share of the maximum."""
    scores = ex.scores[method]
    peak = float(scores.abs().max()) or 1.0
    centre = int(scores.argmax())
    lo = max(0, min(centre - show // 2, len(ex.tokens) - show))
    text = Text("…" if lo else "")
    for t in range(lo, min(len(ex.tokens), lo + show)):
        v = max(0.0, float(scores[t])) / peak
        shade = int(255 * (1 - v))
        text.append(ex.tokens[t], style=f"black on rgb(255,{shade},{shade})" if v > 0.05 else "")
    if lo + show < len(ex.tokens):
        text.append("…")
    return text


def faith_table(ex: Explanation) -> Table:
    table = Table(title="faithfulness (AOPC over k = 1, 5, 10, 20, 50%; ratio = method / random ranking)")
    for col in ("method", "comp", "comp/rand", "suff", "suff/rand", "soft-NC", "soft-NS", "seconds"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for m, row in ex.faithfulness.items():
        table.add_row(m, *[f"{row[c]:.3f}" for c in FAITH_COLUMNS], f"{ex.seconds[m]:.1f}")
    return table


def run_explain(args: argparse.Namespace, console: Console, context: str) -> int:
    from tokensieve.explain import EXPLAINERS, explain
    from tokensieve.runtime.models import load_model

    methods = args.method or ["reagent"]
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise ExplainError(f"unknown explain method {unknown[0]!r}; choose from: {', '.join(EXPLAINERS)}")
    params = parse_params(args.param)
    model, tok = load_model(args.model)
    with console.status("explaining...") if not args.json else _null():
        ex = explain(
            model,
            tok,
            context,
            args.question,
            methods,
            continuation=args.continuation,
            alternative=args.alternative,
            position=args.position,
            answer_prefix=args.answer_prefix,
            max_new_tokens=args.max_new_tokens,
            faithfulness=not args.no_faithfulness,
            params=params,
        )
    if args.html:
        ex.to_html(args.html)
    if args.json:
        print(json.dumps(ex.to_dict(), indent=1))
        return 0
    console.print(f"[bold]answer[/bold]: {ex.answer}  [dim]({ex.target.kind})[/dim]")
    for m in ex.methods:
        console.rule(f"{m}  ({ex.seconds[m]:.1f} s)")
        console.print(heatmap(ex, m, args.show))
        console.print(f"[bold]{ex.verbalize(m)}[/bold]")
    if ex.faithfulness:
        console.print(faith_table(ex))
    if ex.agreement:
        table = Table(title="rank agreement between methods (agreement alone is not validity)")
        for col in ("a", "b", "spearman", "kendall"):
            table.add_column(col)
        for r in ex.agreement:
            table.add_row(r["a"], r["b"], f"{r['spearman']:.3f}", f"{r['kendall']:.3f}")
        console.print(table)
    if args.html:
        console.print(f"HTML written to {args.html}")
    return 0


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
