"""``tokensieve generate --engine llama.cpp``: compress and answer inside llama.cpp's own cache."""

from __future__ import annotations

import argparse

from tokensieve.cli.args import _context, print_answer_record
from tokensieve.errors import ParameterError
from tokensieve.spec import parse_params

ENGINES = ("hf", "llama.cpp")


def add_engine_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--engine", default="hf", choices=ENGINES, help="hf (default) or llama.cpp (the llamacpp extra)")
    g.add_argument(
        "--aggregate",
        default=None,
        help="llama.cpp: per-cell score from layers x heads: max, mean, vote, norm, union, wvote (default: the "
        "engine's default, tokensieve.engines.llamacpp.aggregate.DEFAULT)",
    )
    g.add_argument("--skip-first", type=int, default=0, help="llama.cpp: leave the first N layers out of the score")
    g.add_argument("--renumber", action="store_true", help="llama.cpp: make kept positions contiguous (K-shift)")
    g.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp: context size in tokens (default 8192)")
    g.add_argument("--threads", type=int, default=1, help="llama.cpp: CPU threads (default 1)")
    g.add_argument("--save-state", help="llama.cpp: write the compressed sequence to this file (and FILE.json)")
    g.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="llama.cpp: read the context N tokens at a time, scoring and evicting back to --budget cells after "
        "each chunk (a document longer than the cache; question unseen); needs n_ctx >= budget + chunk",
    )


def cmd_generate_llamacpp(args: argparse.Namespace) -> int:
    from tokensieve.engines.llamacpp import DEFAULT, Engine, Settings, compress

    if args.allocator != "uniform" or args.allocator_param or getattr(args, "pages", None):
        raise ParameterError("--engine llama.cpp keeps one set of cells for every layer: no --allocator or --pages")
    params = parse_params(args.param)
    hybrid = params.pop("hybrid", None)  # hybrid-attention models: keep's split between the two caches
    how = args.aggregate or DEFAULT
    context = _context(args)
    if args.chunk is not None:
        return _generate_chunked(args, context, how, params)
    with Engine(args.model, Settings(n_ctx=args.n_ctx, threads=args.threads)) as eng:
        rep = compress(
            eng, context, args.method, keep=args.keep, budget=args.budget,
            question=args.question if args.query_aware else None, aggregate_by=how,
            renumber=args.renumber, skip_first=args.skip_first, hybrid=hybrid, **params,
        )  # fmt: skip
        ans, saved = _answer_and_save(eng, args)
    record = {
        "answer": ans.text,
        "engine": "llama.cpp",
        "method": rep.method,
        "keep": args.keep,
        "budget": args.budget,
        "aggregate": how,
        "skip_first": args.skip_first,
        "renumber": args.renumber,
        "query_aware": bool(args.query_aware),
        "model": str(args.model),
        "context_tokens": rep.context_tokens,
        "kept_tokens": rep.kept_tokens,
        "state_bytes_full": rep.state_bytes_full,
        "state_bytes": rep.state_bytes,
        "kv_ratio": round(rep.state_bytes / max(rep.state_bytes_full, 1), 4),
        "layers_read": rep.layers_read,
        "window_cells": rep.window_cells,
        "prefill_seconds": round(rep.prefill_seconds, 4),
        "score_seconds": round(rep.score_seconds, 4),
        "decode_seconds": round(ans.decode_seconds, 4),
        "new_tokens": len(ans.tokens),
        **({"state_file_bytes": saved, "state_file": args.save_state} if saved is not None else {}),
    }
    return print_answer_record(record, args.json)


def _answer_and_save(eng, args: argparse.Namespace) -> tuple:
    """Answer the question from the compressed sequence; save it when ``--save-state`` asks."""
    from tokensieve.engines.llamacpp import save

    ans = eng.answer(args.question, args.max_new_tokens, args.answer_prefix)
    return ans, (save(eng, args.save_state) if args.save_state else None)


def _generate_chunked(args: argparse.Namespace, context: str, how: str, params: dict) -> int:
    """``--chunk``: the context is read chunk by chunk under ``--budget`` cells (read_chunked), then answered."""
    from tokensieve.engines.llamacpp import Engine, Settings, read_chunked

    if args.budget is None or args.keep is not None:
        raise ParameterError("--chunk reads under a fixed number of cells: pass --budget N (not --keep)")
    if args.query_aware:
        raise ParameterError("--chunk reads the document before the question is known: drop --query-aware")
    with Engine(args.model, Settings(n_ctx=args.n_ctx, threads=args.threads)) as eng:
        ids = eng.prompt.context_ids(context)
        rep = read_chunked(eng, ids, args.budget, args.chunk, args.method, how, renumber=args.renumber,
                           skip_first=args.skip_first, **params)  # fmt: skip
        ans, saved = _answer_and_save(eng, args)
    record = {
        "answer": ans.text,
        "engine": "llama.cpp",
        "method": rep.method,
        "budget": args.budget,
        "chunk": args.chunk,
        "aggregate": how,
        "skip_first": args.skip_first,
        "renumber": args.renumber,
        "model": str(args.model),
        "context_tokens": rep.document_tokens,
        "kept_tokens": rep.kept_tokens,
        "chunks": rep.chunks,
        "peak_cells": rep.peak_cells,
        "state_bytes": rep.state_bytes,
        "read_seconds": round(rep.seconds, 4),
        "decode_seconds": round(ans.decode_seconds, 4),
        "new_tokens": len(ans.tokens),
        **({"state_file_bytes": saved, "state_file": args.save_state} if saved is not None else {}),
    }
    return print_answer_record(record, args.json)


__all__ = ["ENGINES", "add_engine_args", "cmd_generate_llamacpp"]
