"""tokensieve's GGUF files vs llama.cpp's own quantizer, measured in llama.cpp (benchmarks only; run from the
repository root, in the background: each stage appends rows and skips files already written).

  .venv/bin/python benchmarks/quant_gguf/run.py --model smollm2 --type Q3_K --seeds 0 --stages all

Stages: ``sources`` (the unquantized model as F32 and F16 GGUFs: the reference and llama.cpp's input),
``tokensieve`` (rtn, gptq, gptq+rotation, rsq on the type's grid; rotation in the ``stream`` placement, the
one a GGUF can hold), ``llamacpp`` (``llama_model_quantize`` of the F32 file to the same type: Q3_K -> Q3_K_S),
``imatrix`` (llama.cpp's importance matrix from the same calibration text, when ``--imatrix-bin`` exists),
``eval`` (KL to the F32 file and perplexity on both held-out domains, in llama.cpp), ``speed`` (prefill and
decode tokens/s at 1 and 2 threads, peak RSS, each file in a fresh process).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FTYPES = {  # tokensieve's type -> llama.cpp's file type (the K-quants' all-one-type "_S" mix)
    t: f"LLAMA_FTYPE_MOSTLY_{t}{'_S' if t.endswith('_K') else ''}"
    for t in ("Q3_K", "Q4_K", "Q4_0", "Q4_1", "Q5_0", "Q8_0")
}
METHODS = {  # label -> (method, rotate)
    "rtn": ("rtn", False),
    "gptq": ("gptq", False),
    "gptq+rot": ("gptq", True),
    "rsq": ("rsq", True),
}


def meta(args: argparse.Namespace) -> dict:
    import gguf
    import llama_cpp
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"command": " ".join([".venv/bin/python", *sys.argv]), "commit": commit, "torch": torch.__version__,
            "transformers": transformers.__version__, "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "",
            "llama_cpp_python": llama_cpp.__version__, "machine": platform.platform(),
            "cpu": platform.processor(), "args": vars(args)}  # fmt: skip


RESULTS = Path("benchmarks/quant_gguf/results")  # rows; the GGUF files themselves go to --files (not committed)


def log(out: Path, row: dict) -> None:
    with open(RESULTS / f"{out.name}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (RESULTS / f"{out.name}.jsonl").read_text().splitlines() if x.strip()]


def tag(args: argparse.Namespace, method: str = "gptq") -> str:
    """The calibration text in a file name: none for the first runs (``docs``) and for uncalibrated methods."""
    return "" if args.calib_source == "docs" or method == "rtn" else f"-{args.calib_source}"


def n_weights(model) -> int:
    seen, n = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            n += t.numel()
    return n


def stage_sources(args, out: Path) -> None:
    from tokensieve.quantize.export.gguf import write_gguf
    from tokensieve.runtime.models import BUNDLED, load_model

    for kind in ("F32", "F16"):
        path = out / f"{kind}.gguf"
        if not path.exists():
            model, _ = load_model(args.model, prepare=False)
            w = write_gguf(model, BUNDLED[args.model].gguf_path(), path, kind)
            log(out, {"stage": "sources", "file": path.name, "bytes": w.bytes, "weights": w.weights})


def stage_tokensieve(args, out: Path) -> None:
    from tokensieve.errors import TokenSieveError
    from tokensieve.quantize.export.gguf import write_gguf
    from tokensieve.quantize.run import Recipe, quantize
    from tokensieve.runtime.models import BUNDLED, load_model

    for seed in args.seeds:  # seed-major: every method has seed 0 before any has seed 1
        for label in args.methods.split(","):
            method, rotate = METHODS[label]
            if method == "rtn" and seed != args.seeds[0]:
                continue
            path = out / f"ts-{label}{tag(args, method)}-{args.type}-s{seed}.gguf"
            if path.exists() or any(r.get("file") == path.name and "refused" in r for r in rows(out)):
                continue
            model, tok = load_model(args.model)
            recipe = Recipe(method, rotate=rotate, placement="stream", n_calib=args.calib, calib_len=512,
                            seed=seed, calib_source=args.calib_source, grid=args.type)  # fmt: skip
            try:
                result, _ = quantize(model, tok, recipe)
                start = time.perf_counter()
                part = path.with_name(path.name + ".part")  # a killed run leaves no file that looks finished
                w = write_gguf(model, BUNDLED[args.model].gguf_path(), part, args.type, result)
                part.rename(path)
            except TokenSieveError as e:  # Gemma's post-norms under the stream placement: refused, recorded
                log(out, {"stage": "tokensieve", "file": path.name, "refused": str(e)})
                continue
            log(out, {"stage": "tokensieve", "file": path.name, "method": label, "seed": seed,
                      "calib_source": args.calib_source,
                      "quant_s": round(result.seconds, 1), "write_s": round(time.perf_counter() - start, 1),
                      "bytes": w.bytes, "types": w.types})  # fmt: skip


def stage_llamacpp(args, out: Path) -> None:
    import llama_cpp

    path = out / f"llamacpp-{args.type}.gguf"
    if path.exists():
        return
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[args.type])
    params.nthread = 1
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(out / "F32.gguf").encode(), str(path).encode(), ctypes.byref(params))
    log(out, {"stage": "llamacpp", "file": path.name, "ftype": FTYPES[args.type], "rc": rc,
              "seconds": round(time.perf_counter() - start, 1), "bytes": path.stat().st_size})  # fmt: skip


def stage_imatrix(args, out: Path) -> None:
    """llama.cpp's imatrix from the same calibration windows (seed 0's), then llama-quantize with it."""
    from tokensieve.quantize.data import calibration_windows
    from tokensieve.runtime.models import load_model

    imx, quant = Path(args.imatrix_bin), Path(args.imatrix_bin).with_name("llama-quantize")
    path = out / f"llamacpp-imatrix-{args.type}.gguf"
    if path.exists() or not imx.exists() or not quant.exists():
        if not path.exists():
            log(out, {"stage": "imatrix", "skipped": f"{imx} or {quant} not built"})
        return
    _, tok = load_model(args.model, prepare=False)
    windows = calibration_windows(tok, args.calib, 512, seed=0)
    text = out / "calibration.txt"
    text.write_text("\n".join(tok.decode(w[0]) for w in windows))
    start = time.perf_counter()
    subprocess.run([str(imx), "-m", str(out / "F32.gguf"), "-f", str(text), "-o", str(out / "imatrix.gguf"),
                    "-c", "512", "-t", "1", "--no-ppl"], check=True, capture_output=True)  # fmt: skip
    ftype = FTYPES[args.type].removeprefix("LLAMA_FTYPE_MOSTLY_")
    subprocess.run([str(quant), "--imatrix", str(out / "imatrix.gguf"), str(out / "F32.gguf"), str(path), ftype, "1"],
                   check=True, capture_output=True)  # fmt: skip
    log(out, {"stage": "imatrix", "file": path.name, "seconds": round(time.perf_counter() - start, 1),
              "bytes": path.stat().st_size})  # fmt: skip


def held_out(args, tok) -> dict[str, list[list[int]]]:
    """Both evaluation domains; checked here to share no 16-token run with any calibration window used."""
    from tokensieve.quantize.data import calibration_windows, evaluation_windows

    calib = set()
    for seed in args.seeds:
        for w in calibration_windows(tok, args.calib, 512, seed):
            ids = w[0].tolist()
            calib.update(tuple(ids[i : i + 16]) for i in range(len(ids) - 15))
    windows = {}
    for domain in ("prose", "docs"):
        windows[domain] = [w[0].tolist() for w in evaluation_windows(tok, args.windows, 512, domain=domain)]
        for ids in windows[domain]:
            assert not any(tuple(ids[i : i + 16]) in calib for i in range(len(ids) - 15)), "eval overlaps calib"
    return windows


def stage_eval(args, out: Path) -> None:
    from tokensieve.engines.gguf_run import compare_many
    from tokensieve.runtime.models import load_model

    done = {json.loads(x).get("file") for x in (RESULTS / f"{out.name}.jsonl").read_text().splitlines()
            if json.loads(x).get("stage") == "eval"}  # fmt: skip
    model, tok = load_model(args.model, prepare=False)
    weights = n_weights(model)
    windows = held_out(args, tok)
    # a file written in the last two minutes may still be growing: the next run takes it
    files = [p for p in sorted(out.glob(args.only)) if p.name not in done and time.time() - p.stat().st_mtime > 120]
    rows = {p.name: {"stage": "eval", "file": p.name, "bytes": p.stat().st_size,
                     "bpw": round(8 * p.stat().st_size / weights, 3)} for p in files}  # fmt: skip
    for domain, ws in windows.items():
        for p, q in zip(files, compare_many(out / "F32.gguf", files, ws), strict=True):
            rows[p.name].update({f"kl_{domain}": q.kl, f"ppl_{domain}": q.ppl, f"ppl_f32_{domain}": q.ppl_source,
                                 f"top1_{domain}": q.top1, f"positions_{domain}": q.positions})  # fmt: skip
    for row in rows.values():
        log(out, row)


def stage_speed(args, out: Path) -> None:
    rows = [json.loads(x) for x in (RESULTS / f"{out.name}.jsonl").read_text().splitlines()]
    done = {(r.get("file"), r.get("threads")) for r in rows if r.get("stage") == "speed"}
    for path in sorted(out.glob(args.only)):
        if path.name.startswith("imatrix") or time.time() - path.stat().st_mtime < 120:
            continue
        for threads in (1, 2):
            if (path.name, threads) in done:
                continue
            code = (
                "import json; from tokensieve.engines.gguf_run import speed, as_dict; "
                f"print(json.dumps(as_dict(speed({str(path)!r}, list(range(100, {100 + args.prompt})), "
                f"{args.decode}, {threads}))))"
            )
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            log(out, {"stage": "speed", "file": path.name, **json.loads(res.stdout.strip().splitlines()[-1])})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--type", default="Q3_K")
    p.add_argument("--methods", default="rtn,gptq,gptq+rot,rsq")
    p.add_argument("--seeds", default="0", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--calib-source", default="both", help="docs (the first runs) | both (topics and essays)")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--stages", default="all")
    p.add_argument("--only", default="*.gguf", help="which files the eval and speed stages take (a glob)")
    p.add_argument("--prompt", type=int, default=128, help="prefill tokens of the speed stage")
    p.add_argument("--decode", type=int, default=16, help="decode steps of the speed stage")
    p.add_argument(
        "--imatrix-bin",
        default="/tmp/gguf_imx/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-imatrix",
        help="built by benchmarks/quant_gguf/build_imatrix.sh",
    )
    p.add_argument("--files", default=str(Path.home() / ".cache/tokensieve/quant_gguf"), help="where GGUFs go")
    args = p.parse_args()
    out = Path(args.files) / args.model
    out.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out.name}.jsonl").touch()
    log(out, {"stage": "meta", **meta(args)})
    every = ["sources", "tokensieve", "llamacpp", "imatrix", "eval", "speed"]
    stages = every if args.stages == "all" else args.stages.split(",")
    for s in stages:
        globals()[f"stage_{s}"](args, out)


if __name__ == "__main__":
    main()
