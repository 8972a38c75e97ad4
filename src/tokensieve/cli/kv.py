"""The KV-cache commands: ``methods | generate | calibrate | sinks | decode | demo``."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape
from rich.table import Table

from tokensieve.cli.args import (
    _add_page_args,
    _context,
    _count,
    _keep,
    _page_kwargs,
    _read,
    console,
    print_answer_record,
)
from tokensieve.cli.engine import add_engine_args, cmd_generate_llamacpp
from tokensieve.errors import TokenSieveError
from tokensieve.kv import ALLOCATORS, DEFAULT_METHOD
from tokensieve.spec import parse_params


def cmd_methods(args: argparse.Namespace) -> int:
    from tokensieve.catalog import describe_all

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


def cmd_generate(args: argparse.Namespace) -> int:
    if args.engine == "llama.cpp":
        return cmd_generate_llamacpp(args)
    if args.chunk is not None:
        raise TokenSieveError("--chunk reads through llama.cpp's cache: add --engine llama.cpp (the HF path's "
                              "bounded prefill is the `block` method)")  # fmt: skip
    from tokensieve.kv import Plan, generate, get_allocator
    from tokensieve.runtime.models import load_model

    params = {**parse_params(args.param), **_page_kwargs(args)}
    # fail fast on a bad method, allocator, parameter or keep, before loading the model
    allocator_params = parse_params(args.allocator_param, "--allocator-param", example="tau=0.9")
    allocator = get_allocator(args.allocator, **allocator_params)
    plan = Plan.make(args.method, keep=args.keep, budget=args.budget, allocator=allocator, **params)
    context = _context(args)
    model, tok = load_model(args.model)
    precision_on = getattr(plan.method, "precision_on", None)  # kvzip's pass: "auto" resolved for this device
    ans = generate(
        model,
        tok,
        context,
        args.question,
        args.method,
        keep=args.keep,
        budget=args.budget,
        allocator=allocator,
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
        "kv_bytes_sliding": s.kv_bytes_sliding,  # of kv_bytes, the sliding-window layers' (hybrid models)
        **({"pages": params["pages"]} if "pages" in params else {}),
        "prefill_seconds": round(s.prefill_seconds, 4),
        "compress_seconds": round(s.compress_seconds, 4),
        "decode_seconds": round(s.decode_seconds, 4),
        "new_tokens": s.new_tokens,
    }
    if s.peak_tokens_held:  # block: the most slots one layer held at once (budget + block at most)
        record["peak_tokens_held"] = s.peak_tokens_held
    if precision_on is not None:
        record["precision"] = precision_on(model.device)
    return print_answer_record(record, args.json)


def cmd_calibrate_learned(args: argparse.Namespace) -> int:
    """``--learned kvzap,fastkvzip``: train the learned scorers on the offline corpora and store them."""
    from tokensieve.kv import LEARNED_METHODS, OFFLINE_CALIBRATED, calibrate_offline, train_learned
    from tokensieve.runtime.models import load_model

    names = tuple(m.strip() for m in args.learned.split(",") if m.strip())
    unknown = [m for m in names if m not in LEARNED_METHODS and m not in OFFLINE_CALIBRATED]
    if unknown or not names:
        choices = ", ".join((*LEARNED_METHODS, *OFFLINE_CALIBRATED))
        raise TokenSieveError(f"--learned {args.learned}: choose from {choices}")
    methods = tuple(m for m in names if m in LEARNED_METHODS)
    if methods and (args.val < 1 or args.val >= args.texts):
        raise TokenSieveError(f"--val {args.val} must leave at least one of the {args.texts} texts for training")
    model, tok = load_model(args.model)
    offline = [calibrate_offline(model, tok, m) for m in names if m in OFFLINE_CALIBRATED]  # qfilter, lukv
    for r in offline if not args.json else []:
        console.print(f"{r['method']}: {r['calibration_tokens']} tokens, {r['seconds']} s, shape {r['shape']}")
    if not methods:
        if args.json:
            print(json.dumps(offline))
        return 0
    scorers = train_learned(model, tok, methods, texts=args.texts, tokens=args.tokens, val=args.val,
                            rows=args.rows, epochs=args.epochs)  # fmt: skip
    rows = [{k: v for k, v in s.meta.items() if k != "layers"} | {"key": s.key} for s in scorers.values()]
    if args.json:  # one record: the offline calibrations (qfilter, lukv) beside the trained scorers
        print(json.dumps(offline + rows))
        return 0
    table = Table(title=f"learned scorers of {args.model}, trained on {rows[0]['train_tokens']} tokens")
    for col in ("form", "train tokens", "val tokens", "kvzip pass s", "fit s", "val r (mean over layers)"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["form"], str(r["train_tokens"]), str(r["val_tokens"]), str(r["collect_seconds"]),
                      str(r["fit_seconds"]), str(r["val_r_mean"]))  # fmt: skip
    console.print(table)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tokensieve.kv import calibration_path, get_calibration
    from tokensieve.runtime.models import load_model

    if args.learned:
        return cmd_calibrate_learned(args)
    for name in ("induction", "echo"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise TokenSieveError(f"--{name} {getattr(args, name)} must be a fraction in [0, 1]")
    model, tok = load_model(args.model)
    cal = get_calibration(model, tok, force=args.force)
    kept = cal.retrieval_kv_heads(args.induction, args.echo)
    if args.json:
        out = {
            "key": cal.key,
            "file": str(calibration_path(model)),
            "layers": cal.layers,
            "n_kv_heads": cal.n_kv_heads,
            "induction": cal.induction.tolist(),
            "echo": cal.echo.tolist(),
            "retrieval": cal.retrieval.tolist(),
            "layer_error": cal.layer_error.tolist(),
            "razor_kv_heads": kept.tolist(),
            "settings": cal.settings,
        }
        print(json.dumps(out))
        return 0
    table = Table(title=f"calibration of {args.model} ({cal.key}), cached in {calibration_path(model)}")
    for col in ("layer", "induction (best head)", "echo (best head)", "retrieval (best head)", "layer error", "razor"):
        table.add_column(col)
    for r, layer in enumerate(cal.layers):
        cells = []
        for scores in (cal.induction[r], cal.echo[r], cal.retrieval[r]):
            cells.append(f"{float(scores.max()):.3f} (h{int(scores.argmax())})")
        whole = [str(h) for h in kept[r].nonzero().flatten().tolist()]
        table.add_row(str(layer), *cells, f"{float(cal.layer_error[r]):.3f}", ", ".join(whole) or "-")
    console.print(table)
    n = int(kept.sum())
    console.print(f"razor keeps {n} of {kept.numel()} KV heads whole ({n / kept.numel():.0%} of the cache)")
    return 0


def cmd_sinks(args: argparse.Namespace) -> int:
    from tokensieve.kv import sink_map
    from tokensieve.runtime.models import load_model
    from tokensieve.runtime.passkey import passkey_context

    if not 0.0 < args.epsilon <= 1.0:
        raise TokenSieveError(f"--epsilon {args.epsilon} must be an attention share in (0, 1], e.g. 0.3")
    model, tok = load_model(args.model)
    if args.context_file is not None or args.context is not None:
        text = _context(args)
    else:
        text = passkey_context(tok, args.tokens, 0.5).context
    smap = sink_map(model, tok, text, epsilon=args.epsilon, min_queries=args.min_queries)
    if args.plot:
        smap.plot(args.plot)
    if args.json:
        print(json.dumps(smap.to_json()))
        return 0
    first = smap.first_token_share()
    table = Table(
        title=f"attention sinks (mean share >= {args.epsilon}) in {args.model}, {smap.share.shape[-1]} tokens"
    )
    for col in ("layer", "first token share (mean / min over heads)", "other sinks: head token 'text' share"):
        table.add_column(col, overflow="fold")
    by_layer: dict[int, list[str]] = {}
    for s_ in smap.sinks():
        if s_.token > 0:
            by_layer.setdefault(s_.layer, []).append(f"h{s_.head} {s_.token} {s_.text!r} {s_.share:.2f}")
    for r, layer in enumerate(smap.layers):
        others = by_layer.get(layer, [])
        table.add_row(
            str(layer),
            f"{float(first[r].mean()):.2f} / {float(first[r].min()):.2f}",
            escape("; ".join(others[:6]) + (f" (+{len(others) - 6})" if len(others) > 6 else "")),
        )
    console.print(table)
    if args.plot:
        console.print(f"plot: {args.plot}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from tokensieve.kv import REGISTRY, decode, decode_family
    from tokensieve.runtime.models import load_model

    params = parse_params(args.param)
    family = decode_family(args.method)  # fail fast on a bad method before loading the model
    share = family == "decode eviction" and REGISTRY[args.method].decode_share  # ratio_decoding, dms: no budget
    if share and args.budget is not None:
        raise TokenSieveError(f"{args.method} decides the share it keeps while decoding: pass no --budget")
    if family == "decode eviction" and args.budget is None and not share:
        raise TokenSieveError(f"decode eviction with {args.method} needs --budget N (tokens held per KV head)")
    if family != "decode eviction" and (args.budget is not None or args.prefill is not None):
        raise TokenSieveError(f"--budget / --prefill apply to decode eviction, not to {family} ({args.method})")
    if args.read is not None and args.read_tokens is not None:
        raise TokenSieveError("pass --read (a fraction) or --read-tokens (a count), not both")
    read = args.read if args.read_tokens is None else args.read_tokens
    if family != "sparse decoding" and read is not None:
        raise TokenSieveError(f"--read applies to sparse decoding, not to {family} ({args.method})")
    pages = _page_kwargs(args)
    if pages and family != "decode eviction":
        raise TokenSieveError(f"--pages applies to decode eviction (and generate), not to {family} ({args.method})")
    params.update(pages)
    context = _context(args)
    model, tok = load_model(args.model)
    ans = decode(
        model,
        tok,
        context,
        args.question,
        args.method,
        budget=args.budget,
        read=read,
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


def cmd_demo(args: argparse.Namespace) -> int:
    from tokensieve.demo import run_demo

    return run_demo(args.model, args.method, args.keep, args.tokens, args.depth, console)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("methods", help="list every method id with its paper and rule")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)

    g = sub.add_parser("generate", help="compress a context, then answer a question from the compressed cache")
    g.add_argument("--model", default="smollm2", help="bundled name (smollm2, gemma3-270m) or a local model dir")
    g.add_argument("--method", default=DEFAULT_METHOD, help=f"method id (see `tokensieve methods`; {DEFAULT_METHOD})")
    size = g.add_mutually_exclusive_group(required=True)
    size.add_argument("--keep", type=_keep, help="fraction of context tokens to keep, in (0, 1]")
    size.add_argument("--budget", type=int, help="tokens to keep per KV head")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--context-file", help="text file holding the context")
    src.add_argument("--context", help="the context text itself")
    g.add_argument("--question", required=True)
    g.add_argument("--max-new-tokens", type=_count, default=32)
    g.add_argument("--answer-prefix", default="", help='text that starts the answer, e.g. "The pass key is"')
    g.add_argument("--allocator", default="uniform", choices=list(ALLOCATORS), help="budget allocator")
    g.add_argument(
        "--allocator-param",
        action="append",
        metavar="NAME=VALUE",
        help="override an allocator parameter, e.g. --allocator-param tau=0.9 (zipvl)",
    )
    g.add_argument(
        "--query-aware",
        action="store_true",
        help="compress context and question together (the question is otherwise unseen)",
    )
    g.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="override a method parameter, e.g. --param window=64",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    _add_page_args(g)
    add_engine_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("calibrate", help="measure a model's retrieval heads once (razor, compresskv); cached")
    c.add_argument("--model", default="smollm2")
    c.add_argument("--force", action="store_true", help="measure again even if a calibration is cached")
    c.add_argument("--induction", type=float, default=0.1, help="razor: fraction of KV heads kept by induction")
    c.add_argument("--echo", type=float, default=0.02, help="razor: fraction of KV heads kept by echo")
    c.add_argument(
        "--learned",
        metavar="METHODS",
        help="train learned scorers instead (kvzap, fastkvzip; comma-separated) on the offline corpora "
        "(python3.11-doc, debian-reference-en, licence texts; never the bench's haystacks)",
    )
    c.add_argument("--texts", type=int, default=32, help="--learned: training + validation texts")
    c.add_argument("--tokens", type=int, default=1024, help="--learned: tokens per text")
    c.add_argument("--val", type=int, default=6, help="--learned: texts held out for validation")
    c.add_argument("--rows", type=int, default=256, help="--learned: tokens sampled per text for the MLP / gates")
    c.add_argument("--epochs", type=int, default=12, help="--learned: MLP / gate epochs")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("sinks", help="per-layer, per-head map of attention-sink tokens on a text")
    s.add_argument("--model", default="smollm2")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--context-file", help="text file to analyse")
    src.add_argument("--context", help="the text itself")
    s.add_argument("--tokens", type=int, default=1000, help="without a text: this many tokens of bundled prose")
    s.add_argument("--epsilon", type=float, default=0.3, help="a sink takes at least this mean attention share")
    s.add_argument("--min-queries", type=int, default=32, help="only tokens seen by this many queries qualify")
    s.add_argument("--plot", help="write a PNG heat map (layers x heads) here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sinks)

    dc = sub.add_parser(
        "decode",
        help="answer with a decode-time method: eviction while generating (--budget), sparse reads (--read), "
        "or prefill pruning",
    )
    dc.add_argument("--model", default="smollm2", help="bundled name (smollm2, gemma3-270m) or a local model dir")
    dc.add_argument("--method", required=True, help="a decode-time method id (see `tokensieve methods`)")
    dc.add_argument("--budget", type=int, help="decode eviction: tokens held per KV head at every step")
    dc.add_argument("--read", type=_read, help="sparse decoding: fraction of the cache read per step (default 1/8)")
    dc.add_argument("--read-tokens", type=_count, help="sparse decoding: tokens read per step (instead of --read)")
    dc.add_argument("--prefill", help="decode eviction: a prefill-eviction method that compresses the prompt first")
    dc.add_argument("--prefill-keep", type=_keep, help="the prefill method's keep ratio")
    src = dc.add_mutually_exclusive_group(required=True)
    src.add_argument("--context-file", help="text file holding the context")
    src.add_argument("--context", help="the context text itself")
    dc.add_argument("--question", required=True)
    dc.add_argument("--max-new-tokens", type=_count, default=32)
    dc.add_argument("--answer-prefix", default="", help='text that starts the answer, e.g. "The pass key is"')
    dc.add_argument("--measure", action="store_true", help="sparse decoding: also measure selection recall")
    dc.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a method parameter")
    dc.add_argument("--json", action="store_true", help="print one JSON object")
    _add_page_args(dc)
    dc.set_defaults(func=cmd_decode)

    d = sub.add_parser("demo", help="the main job: a pass key in ~2k tokens, compressed 4x, answered")
    d.add_argument("--model", default="smollm2")
    d.add_argument("--method", default=DEFAULT_METHOD)
    d.add_argument("--keep", type=_keep, default=0.25)
    d.add_argument("--tokens", type=int, default=2000)
    d.add_argument("--depth", type=float, default=0.5)
    d.set_defaults(func=cmd_demo)
