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
    from tokensieve.quantize.export.formats import check_exportable
    from tokensieve.quantize.export.gguf import write_gguf
    from tokensieve.quantize.rotate import placement_of
    from tokensieve.quantize.rotate import rotate as rotate_model
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
            if rotate:  # a refused rotation (Gemma's post-norms) is refused before GPTQ's minutes, not after
                probe, _ = load_model(args.model)  # one model in memory at a time (Gemma's GPTQ peaks near 5 GB)
                rotate_model(probe, seed=seed, placement=placement_of(probe, "stream"))
                try:
                    check_exportable(probe, "stream")
                except TokenSieveError as e:
                    log(out, {"stage": "tokensieve", "file": path.name, "refused": str(e)})
                    continue
                finally:
                    del probe
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
    """llama.cpp's imatrix from the same calibration windows as tokensieve's (per seed, decoded to the text file
    llama-imatrix reads; it cuts 512-token chunks again), then llama-quantize of the F32 file with it."""
    from tokensieve.quantize.data import calibration_windows
    from tokensieve.runtime.models import load_model

    imx = Path(args.llama_bin) / "llama-imatrix"
    quant = imx.with_name("llama-quantize")
    if not imx.exists() or not quant.exists():
        log(out, {"stage": "imatrix", "skipped": f"{imx} or {quant} not built (benchmarks/quant_gguf/build_llama.sh)"})
        return
    _, tok = load_model(args.model, prepare=False)
    ftype = args.llama_ftype or FTYPES[args.type].removeprefix("LLAMA_FTYPE_MOSTLY_")
    name = args.llama_ftype or args.type  # another mix of the same matrix (Q3_K_L: llama.cpp's largest 3-bit)
    for seed in args.seeds:
        path = out / f"llamacpp-imatrix{tag(args)}-{name}-s{seed}.gguf"
        if path.exists():
            continue
        windows = calibration_windows(tok, args.calib, 512, seed, args.calib_source)
        text, matrix = out / f"calibration{tag(args)}-s{seed}.txt", out / f"imatrix{tag(args)}-s{seed}.dat"
        start = time.perf_counter()
        chunks = ["the matrix of this seed, collected for an earlier file type"]
        if not matrix.exists():
            text.write_text("\n".join(tok.decode(w[0]) for w in windows))
            # --output-format dat: the .gguf name would put the matrix among the models the other stages glob
            imx_run = subprocess.run([str(imx), "-m", str(out / "F32.gguf"), "-f", str(text), "-o", str(matrix),
                                      "--output-format", "dat", "-c", "512", "-t", "1", "--no-ppl"],
                                     capture_output=True, text=True)  # fmt: skip
            if imx_run.returncode:
                raise SystemExit(f"llama-imatrix failed: {imx_run.stderr[-2000:]}")
            chunks = [x for x in imx_run.stderr.splitlines() if "chunks" in x or "tokenizing" in x][-3:]
        part = path.with_name(path.name + ".part")
        q = subprocess.run([str(quant), "--imatrix", str(matrix), str(out / "F32.gguf"), str(part), ftype, "1"],
                           capture_output=True, text=True)  # fmt: skip
        if q.returncode:
            raise SystemExit(f"llama-quantize failed: {q.stderr[-2000:]}")
        part.rename(path)
        log(out, {"stage": "imatrix", "file": path.name, "seed": seed, "calib_source": args.calib_source,
                  "ftype": ftype, "imatrix_log": chunks, "seconds": round(time.perf_counter() - start, 1),
                  "bytes": path.stat().st_size})  # fmt: skip


def stage_imatrix_py(args, out: Path) -> None:
    """llama.cpp's imatrix quantization through the Python binding, for when llama-imatrix is not built: the
    matrix is what llama-imatrix collects (per linear, the mean of each input column's square over every
    calibration token; the output head left out, as llama-imatrix does by default), taken here with forward
    hooks on the same calibration windows tokensieve quantizes with; ``llama_model_quantize`` of the F32 file
    with it (``params.imatrix``), the same file type as the plain llama.cpp row."""
    import gguf
    import llama_cpp
    import torch

    from tokensieve.compat.gguf import gguf_layout
    from tokensieve.quantize.data import calibration_windows
    from tokensieve.runtime.models import BUNDLED, load_model

    model, tok = load_model(args.model, prepare=False)
    arch = str(gguf.GGUFReader(BUNDLED[args.model].gguf_path()).fields["general.architecture"].contents())
    layout = gguf_layout(model, arch)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and f"{n}.weight" in layout and layout[f"{n}.weight"].name.startswith("blk.")}  # fmt: skip
    for seed in args.seeds:
        path = out / f"llamacpp-imatrix-py{tag(args)}-{args.type}-s{seed}.gguf"
        if path.exists():
            continue
        start = time.perf_counter()
        sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
        count = {n: 0 for n in linears}

        def hook(name, sums=sums, count=count):
            def f(_, inputs):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                sums[name] += (x * x).sum(0)
                count[name] += x.shape[0]

            return f

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
        with torch.no_grad():
            for w in calibration_windows(tok, args.calib, 512, seed, args.calib_source):
                model(input_ids=w)
        for h in handles:
            h.remove()
        means = {layout[f"{n}.weight"].name: (sums[n] / count[n]).float().numpy() for n in linears}
        table = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
        for i, (name, v) in enumerate(means.items()):
            table[i].name, table[i].size = name.encode(), v.size
            table[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        table[len(means)].name = None  # the list ends at a null name
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = getattr(llama_cpp, FTYPES[args.type]), 1
        params.imatrix = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        part = path.with_name(path.name + ".part")
        rc = llama_cpp.llama_model_quantize(str(out / "F32.gguf").encode(), str(part).encode(), ctypes.byref(params))
        if rc:
            raise SystemExit(f"llama_model_quantize with an imatrix failed: {rc}")
        part.rename(path)
        log(out, {"stage": "imatrix_py", "file": path.name, "seed": seed, "calib_source": args.calib_source,
                  "ftype": FTYPES[args.type], "tensors": len(means), "tokens": max(count.values()),
                  "seconds": round(time.perf_counter() - start, 1), "bytes": path.stat().st_size})  # fmt: skip


def domains(args) -> tuple[str, str]:
    """The held-out prose is the essays' first paragraphs when calibration also reads essays (``both``)."""
    return ("prose", "docs") if args.calib_source == "docs" else ("essays", "docs")


def held_out(args, tok) -> dict[str, list[list[int]]]:
    """Both evaluation domains; checked here to share no 16-token run with any calibration window used (every
    seed of this calibration text, and the first runs' docs-only seed 0)."""
    from tokensieve.quantize.data import calibration_windows, evaluation_windows

    calib = set()
    used = [(s, args.calib_source) for s in args.seeds] + [(0, "docs")]
    for seed, source in used:
        for w in calibration_windows(tok, args.calib, 512, seed, source):
            ids = w[0].tolist()
            calib.update(tuple(ids[i : i + 16]) for i in range(len(ids) - 15))
    windows = {}
    for domain in domains(args):
        windows[domain] = [w[0].tolist() for w in evaluation_windows(tok, args.windows, 512, domain=domain)]
        for ids in windows[domain]:
            assert not any(tuple(ids[i : i + 16]) in calib for i in range(len(ids) - 15)), "eval overlaps calib"
    return windows


def stage_eval(args, out: Path) -> None:
    from tokensieve.engines.gguf_run import compare_many
    from tokensieve.runtime.models import load_model

    eval_set = f"{'-'.join(domains(args))}-w{args.windows}"  # rows of other window sets are not this one's
    done = {r.get("file") for r in rows(out) if r.get("stage") == "eval" and r.get("eval_set") == eval_set}
    model, tok = load_model(args.model, prepare=False)
    weights = n_weights(model)
    del model  # the evaluation runs in llama.cpp; Gemma's [512, 262k] logits per open file need the memory
    windows = held_out(args, tok)
    todo = [p for p in finished(out, args.only) if p.name not in done]
    for k in range(0, len(todo), args.group):  # a killed run keeps what the finished passes logged
        files = todo[k : k + args.group]
        rows_ = {p.name: {"stage": "eval", "eval_set": eval_set, "file": p.name, "bytes": p.stat().st_size,
                          "bpw": round(8 * p.stat().st_size / weights, 3)} for p in files}  # fmt: skip
        for domain, ws in windows.items():
            for p, q in zip(files, compare_many(out / "F32.gguf", files, ws), strict=True):
                rows_[p.name].update({f"kl_{domain}": q.kl, f"ppl_{domain}": q.ppl, f"windows_{domain}": len(ws),
                                      f"ppl_f32_{domain}": q.ppl_source, f"top1_{domain}": q.top1,
                                      f"positions_{domain}": q.positions})  # fmt: skip
        for row in rows_.values():
            log(out, row)


def finished(out: Path, pattern: str) -> list[Path]:
    """The GGUF files (``pattern``: comma-separated globs) the eval and speed stages take (a file written in the
    last two minutes may still grow)."""
    files = {p for g in pattern.split(",") for p in out.glob(g)}
    return [p for p in sorted(files) if time.time() - p.stat().st_mtime > 120]


def stage_speed(args, out: Path) -> None:
    """Tokens/s: every file open in this one process, measured in turn (file x threads), ``--reps`` rounds, so
    the other sessions' load falls on every file alike; median and spread per file. Peak RSS: each file in a
    fresh process (a process's peak is its own), raw and minus the same process's peak before loading."""
    from tokensieve.engines.gguf_run import open_gguf, rates

    files = finished(out, args.only)
    prompt = list(range(100, 100 + args.prompt))
    Path(f"/proc/{__import__('os').getpid()}/autogroup").write_text("-5")  # root: ahead of the other sessions
    llms = {p.name: open_gguf(p, 1, n_ctx=len(prompt) + args.decode + 1) for p in files}
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    load = [Path("/proc/loadavg").read_text().split()[:3]]
    for _ in range(args.reps):
        for name, llm in llms.items():
            for threads in (1, 2):
                runs.setdefault((name, threads), []).append(rates(llm, prompt, args.decode, threads))
        load.append(Path("/proc/loadavg").read_text().split()[:3])
    del llms
    for (name, threads), r in runs.items():
        pre, dec = sorted(x[0] for x in r), sorted(x[1] for x in r)
        log(out, {"stage": "speed3", "file": name, "threads": threads, "reps": len(r), "prefill_tokens": len(prompt),
                  "decode_tokens": args.decode, "prefill_tok_s": pre[len(pre) // 2], "prefill_range": [pre[0], pre[-1]],
                  "decode_tok_s": dec[len(dec) // 2], "decode_range": [dec[0], dec[-1]], "loadavg": load,
                  "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()})  # fmt: skip
    for p in files:
        code = (
            "import json; from tokensieve.engines.gguf_run import speed, as_dict; "
            f"print(json.dumps(as_dict(speed({str(p)!r}, {prompt!r}, {args.decode}, 1, 1))))"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        log(out, {"stage": "rss", "file": p.name, "rss_mb": r["rss_mb"], "rss_base_mb": r["rss_base_mb"],
                  "rss_model_mb": round(r["rss_mb"] - r["rss_base_mb"], 1)})  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--type", default="Q3_K")
    p.add_argument("--methods", default="rtn,gptq,gptq+rot,rsq")
    p.add_argument("--seeds", default="0", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--calib-source", default="both", help="docs (the first runs) | both (topics and essays)")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--group", type=int, default=6, help="eval: files per pass (each holds [512, vocab] logits)")
    p.add_argument("--stages", default="all")
    p.add_argument("--only", default="*.gguf", help="eval and speed: which files (globs, comma-separated)")
    p.add_argument("--prompt", type=int, default=128, help="prefill tokens of the speed stage")
    p.add_argument("--decode", type=int, default=16, help="decode steps of the speed stage")
    p.add_argument("--reps", type=int, default=3, help="rounds of the speed stage over every file")
    p.add_argument("--llama-ftype", default="", help="imatrix stage: llama.cpp's file type (default: --type's _S mix)")
    p.add_argument("--llama-bin", default="/tmp/llama_tools/bin", help="llama-imatrix, llama-quantize: build_llama.sh")
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
