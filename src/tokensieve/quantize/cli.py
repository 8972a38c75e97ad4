"""``tokensieve quantize``: quantize a bundled (or local) model, save it, and optionally evaluate it."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokensieve.errors import ParameterError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="bundled model name or a local model directory")
    p.add_argument("--method", default="gptq", help="rtn | gptq | rsq")
    p.add_argument("--bits", type=int, help="2, 3, 4 or 8 (default 4; a gguf type sets its own)")
    p.add_argument("--group", type=int, help="input columns per scale; 0 = one per output channel (default)")
    p.add_argument(
        "--format",
        default="fake",
        help="fake (research: codes one per byte, loaded back in fp32) | gguf:Q4_0|Q4_1|Q5_0|Q5_1|Q8_0|Q3_K|Q4_K "
        "(llama.cpp) | compressed-tensors (transformers / vLLM, --bits 3|4 with --group)",
    )
    p.add_argument("--source-gguf", help="a GGUF of the model to copy the architecture metadata from (own models)")
    p.add_argument("--weights", help="token weights: attncon, uniform or a KV score id (rsq: attncon)")
    p.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None, help="rotate what the linears read")
    p.add_argument("--rotation", default="auto", help="auto | hadamard | random")
    p.add_argument(
        "--placement",
        default="auto",
        choices=("auto", "stream", "inputs"),
        help="rotate the residual stream, or each norm's output (auto: inputs where the stream has post-norms)",
    )
    p.add_argument("--clip", action="store_true", help="search a clipping ratio per group")
    p.add_argument("--calib", type=int, default=8, help="calibration windows")
    p.add_argument("--calib-len", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (fake, compressed-tensors) or .gguf file")
    p.add_argument(
        "--eval",
        action="store_true",
        help="perplexity, KL, top-1 vs full precision on prose and on docs (*_docs); pass key",
    )
    p.add_argument("--eval-windows", type=int, default=4, help="512-token windows of held-out text")
    p.add_argument("--passkey-tokens", type=int, default=1500)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run_quantize(args: argparse.Namespace, console: Console) -> int:
    from tokensieve.quantize.export.formats import parse_format, recipe_for
    from tokensieve.quantize.io import save
    from tokensieve.quantize.methods import get_quant_method
    from tokensieve.quantize.run import Recipe, quantize
    from tokensieve.runtime.models import load_model

    m = get_quant_method(args.method)
    if not m.calibrated and (args.weights or args.rotate):
        raise ParameterError("--method rtn takes no calibration: drop --weights/--rotate, or use gptq or rsq")
    fmt = parse_format(args.format)
    recipe = Recipe(args.method, 4, 0, args.clip, args.weights, args.rotate, args.rotation,
                    args.placement, args.calib, args.calib_len, args.seed)  # fmt: skip
    recipe = recipe_for(fmt, recipe, args.bits, args.group)
    export = _exporter(fmt, args)  # checks the source before any work
    model, tok = load_model(args.model)
    if export is not None and recipe.resolved().rotate:
        from tokensieve.quantize.export.formats import check_exportable
        from tokensieve.quantize.rotate import placement_of

        check_exportable(model, placement_of(model, recipe.placement))  # before the work, not after
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} layers")]
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{args.method} {recipe.bits}-bit", total=None)
        result, rotation = quantize(model, tok, recipe, lambda done, n: bar.update(task, completed=done, total=n))
    out = {"method": args.method, "format": fmt.label, "bits": recipe.bits, "group": recipe.group,
           "seconds": round(result.seconds, 1), "calib_tokens": result.tokens,
           "layers": len(result.layers)}  # fmt: skip
    if export is None:
        out["file"] = str(save(args.out, args.model, recipe, result, rotation))
    else:
        with console.status(f"writing {fmt.label}..."):
            out.update(export(model, tok, result))
    if args.eval:
        from tokensieve.quantize.data import evaluation_windows
        from tokensieve.quantize.evaluate import compare, passkey

        full, _ = load_model(args.model)
        with console.status("evaluating against full precision..."):
            quality = compare(model, full, evaluation_windows(tok, args.eval_windows, 512))
            # the calibration's own domain (other topics): GPTQ fits its calibration text, so both are shown
            docs = compare(model, full, evaluation_windows(tok, args.eval_windows, 512, domain="docs"))
            quality.passkey = passkey(model, tok, args.passkey_tokens, (0.25, 0.75))
            quality.passkey_full = passkey(full, tok, args.passkey_tokens, (0.25, 0.75))
            quality.passkey_n = 4
        out.update(quality.as_dict())
        out.update({f"{k}_docs": v for k, v in docs.as_dict().items() if k in ("ppl", "ppl_full", "kl", "top1")})
    if args.json:
        # strict JSON has no NaN (a one-window interval): null
        print(json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in out.items()}))
        return 0
    table = Table(title=f"{args.model}: {args.method} {recipe.bits}-bit, group {recipe.group or 'per channel'}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in out.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    return 0


def _exporter(fmt, args: argparse.Namespace):
    """None for the research format, else a function (model, tokenizer, result) -> what to report."""
    import time

    if fmt.kind == "fake":
        return None
    if fmt.kind == "gguf":
        from tokensieve.quantize.export.formats import gguf_source
        from tokensieve.quantize.export.gguf import write_gguf

        source = gguf_source(args.model, args.source_gguf)
        out = args.out if args.out.endswith(".gguf") else f"{args.out}/model-{fmt.type}.gguf"

        def gguf_export(model, tok, result) -> dict:
            start = time.perf_counter()
            w = write_gguf(model, source, out, fmt.type, result)
            return {"file": str(w.path), "file_bytes": w.bytes, "bits_per_weight": round(w.bits_per_weight, 3),
                    "tensor_types": w.types, "export_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip

        return gguf_export
    from tokensieve.quantize.export.compressed import write_compressed

    def compressed_export(model, tok, result) -> dict:
        start = time.perf_counter()
        w = write_compressed(model, tok, result, args.out)
        return {"file": str(w.path), "file_bytes": w.bytes, "bits_per_weight": round(w.bits_per_weight, 3),
                "export_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip

    return compressed_export
