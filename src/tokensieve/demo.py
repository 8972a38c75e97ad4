"""The main job: hide a pass key in ~2k tokens of bundled prose, compress the cache, answer."""

from __future__ import annotations

import random

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tokensieve.core.ops.memory import mib
from tokensieve.kv import Stats, compress, generate, get_method, prefill
from tokensieve.runtime.models import load_model
from tokensieve.runtime.passkey import passkey_context


def _row(table: Table, mode: str, answer: str, ok: bool, s: Stats) -> None:
    table.add_row(
        mode,
        escape(answer),
        "[green]yes[/green]" if ok else "[red]no[/red]",
        f"{mib(s.kv_bytes_full):.1f} -> {mib(s.kv_bytes):.1f} MiB ({s.ratio:.0%})",
        f"{s.prefill_seconds:.2f}",
        f"{s.compress_seconds:.3f}",
        f"{s.decode_seconds:.2f} ({s.new_tokens} tok)",
    )


def run_demo(model_name: str, method: str, keep: float, tokens: int, depth: float, console: Console) -> int:
    console.print(f"[bold]tokensieve demo[/bold]: model={model_name} method={method} keep={keep}")
    model, tok = load_model(model_name)
    key = str(random.Random(tokens).randint(10000, 99999))
    task = passkey_context(tok, tokens, depth, key)
    console.print(f"context: ~{tokens} tokens of bundled prose, pass key {key} hidden at depth {depth:.0%}")
    console.print(f"question: {task.question} (answer starts: {task.answer_prefix!r})")
    table = Table()
    for col in ("cache", "answer", "correct", "KV cache (measured)", "prefill s", "compress s", "decode s"):
        table.add_column(col, overflow="fold")

    full = prefill(model, tok, task.context).uncompressed()
    text = full.answer(task.question, answer_prefix=task.answer_prefix)
    _row(table, "full", text, task.correct(text), full.stats)

    ctx = compress(model, tok, task.context, method, keep=keep)
    text = ctx.answer(task.question, answer_prefix=task.answer_prefix)
    _row(table, f"{method}, question unseen", text, task.correct(text), ctx.stats)
    # the title's factor is the bytes measured, not 1 / keep (on hybrid models keep is a share of all layers' bytes)
    table.title = f"{method} at keep={keep} ({1 / ctx.stats.ratio:.1f}x fewer bytes, measured) vs the full cache"

    ans = generate(
        model, tok, task.context, task.question, method, keep=keep, query_aware=True, answer_prefix=task.answer_prefix
    )
    _row(table, f"{method}, query-aware", ans.text, task.correct(ans.text), ans.stats)

    # the same bytes, nothing dropped: the top tokens (by the method's own score) in fp32, the others in INT2
    importance = method if get_method(method).kind == "prefill eviction" else "snapkv"
    mixed = get_method("mikv", importance=importance, lo_bits=2, budget_of="bytes")
    ctx = compress(model, tok, task.context, mixed, keep=keep)
    text = ctx.answer(task.question, answer_prefix=task.answer_prefix)
    _row(table, "mikv fp32 + INT2 (same bytes), question unseen", text, task.correct(text), ctx.stats)
    console.print(table)
    console.print(
        "question unseen: the context is compressed alone and the question comes afterwards (cache reuse).\n"
        "query-aware: the question is part of the compressed prompt, as in SnapKV's original setting.\n"
        f"mikv: the same bytes as {method} at keep={keep}, with the evicted tokens kept in INT2 instead of dropped."
    )
    return 0
