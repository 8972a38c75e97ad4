"""Retrieval inside llama.cpp at keep 0.5 / 0.25 / 0.1, question unseen: tokensieve's scores (read from llama.cpp's
own attention) acting on llama.cpp's own cache, against the full cache and llama.cpp's quantized KV cache.

Per sample: one prefill (the last ``window`` queries' attention read on the way: snapkv's score), one snapshot of
the sequence, one KVzip reconstruction pass; then for every (method, aggregate, keep) the snapshot is restored,
evicted and asked. Baselines on the same samples: the full cache (plain llama.cpp context: its prefill seconds
and decode speed), ``q8_0`` and ``q4_0`` K and V caches (flash attention on, which quantized V requires).
Rows go to ``--out`` (JSON lines, resumable: a rerun skips the rows already there).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/run.py --model smollm2 --tokens 2000 --samples 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from tokensieve.engines.llamacpp import Engine, Settings
from tokensieve.engines.llamacpp.evict import evict, renumber_positions
from tokensieve.engines.llamacpp.hybrid import cut_window, split
from tokensieve.engines.llamacpp.scores import (
    DEFAULT,
    aggregate,
    get_method,
    keep_cells,
    pooled,
    reconstruction_pass,
    window_pass,
)
from tokensieve.engines.llamacpp.state import restore, snapshot
from tokensieve.measure.tasks import get_task, score


def done_keys(out_path: Path) -> set:
    """The cell keys a resumable results file already holds (creating its folder): the scripts here skip them."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not out_path.exists():
        return set()
    return {json.loads(line).get("key") for line in out_path.read_text().splitlines() if line.strip()}


def meta(args: argparse.Namespace) -> dict:
    import llama_cpp
    import numpy
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "type": "meta",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/{Path(sys.argv[0]).name} "
        + " ".join(sys.argv[1:]),
        "commit": commit,
        "llama_cpp_python": llama_cpp.__version__,
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {platform.node()}".strip(),
        "args": vars(args),
    }


def answer_row(eng: Engine, q, base: dict, **extra) -> dict:
    t = time.perf_counter()
    ans = eng.answer(q.text, q.max_new_tokens, q.answer_prefix)
    s, _hits = score(ans.text, q)
    new = max(len(ans.tokens) - 1, 1)
    return {
        **base,
        **extra,
        "score": s,
        "answer": ans.text,
        "kept": len(eng.seq),
        "state_bytes": eng.state_bytes(),
        "decode_tok_s": new / ans.decode_seconds if ans.decode_seconds > 0 else None,
        "answer_seconds": time.perf_counter() - t,
    }


def cell_name(args, method: str, agg: str, keep: float) -> str:
    """``method/aggregate/keep``, with ``p<kernel>`` (``--pool``) and ``r<N>`` (kvzip's ``--recent``) before the keep
    when they override the method's own."""
    name = f"{method}/{agg}"
    if args.pool and method in ("kvzip", "snapkv"):
        name += f"/p{args.pool}"
    if args.recent and method == "kvzip":
        name += f"/r{args.recent}"
    if args.hybrid:
        name += "/" + {"full-first": "ff", "even": "even", "full-only": "fo"}[args.hybrid]
    return f"{name}/{keep}"


def run_sample(args, eng: Engine, plain: dict[str, Engine], task, index: int, done: set, out) -> None:
    sample = task.sample(eng.tokenizer, args.tokens, index, seed=args.seed)
    ids = eng.prompt.context_ids(sample.context)
    base = {"type": "row", "model": args.model, "task": task.spec(), "tokens": args.tokens, "index": index,
            "context_tokens": len(ids)}  # fmt: skip

    def emit(row: dict) -> None:
        out.write(json.dumps(row) + "\n")
        out.flush()

    def key(**kw) -> str:
        return json.dumps({**{k: base[k] for k in ("model", "task", "tokens", "index")}, **kw}, sort_keys=True)

    # streaming reads no attention: one aggregate is enough
    wanted = [(m, a, k) for m in args.methods for a in args.aggregates for k in args.keeps
              if m != "streaming" or a == args.aggregates[0]]  # fmt: skip
    quant = [(w, kind) for w in wanted for kind in args.quant_evict if w[0] in args.quant_methods]
    todo = [w for w in wanted if key(cell=cell_name(args, *w)) not in done
            or any(x == w and key(cell=f"{cell_name(args, *w)}+{k}") not in done for x, k in quant)]  # fmt: skip
    # baselines: plain llama.cpp (f16 cache: the full reference, its prefill time) and quantized KV caches
    quant_snaps = {}
    for kind, p in plain.items():
        needs_snap = kind in args.quant_evict and any(key(cell=f"{cell_name(args, *w)}+{kind}") not in done
                                                      for w, k in quant if k == kind)  # fmt: skip
        if key(cell=kind) in done and not needs_snap:
            continue
        p.clear()
        t = time.perf_counter()
        p.prefill(ids)
        prefill_s = time.perf_counter() - t
        if needs_snap:
            quant_snaps[kind] = snapshot(p)
        if key(cell=kind) in done:
            continue
        for qi, q in enumerate(sample.questions):
            emit(answer_row(p, q, base, cell=kind, question=qi, prefill_seconds=prefill_s, key=key(cell=kind)))
    if not todo:
        return
    eng.clear()
    snap_m = get_method("snapkv", window=args.window, observe=args.window)
    t = time.perf_counter()
    window_layers = window_pass(eng, ids, snap_m.observe)
    prefill_window_s = time.perf_counter() - t
    # hybrid-attention models: keep = share of the state's bytes, (full-layer positions, window cells) per keep
    splits = {k: split(eng, k, args.hybrid) for k in args.keeps} if args.hybrid else {}
    snap = snapshot(eng)
    recon, recon_s = None, 0.0
    if any(m == "kvzip" for m, _, _ in todo):
        t = time.perf_counter()
        recon = reconstruction_pass(eng, args.chunk)
        recon_s = time.perf_counter() - t
    for m_id, agg, keep in todo:
        m = get_method(m_id, window=args.window, observe=args.window) if m_id == "snapkv" else get_method(m_id)
        if args.pool and m_id in ("kvzip", "snapkv"):
            m = dataclasses.replace(m, pool=args.pool)
        if args.recent and m_id == "kvzip":
            m = dataclasses.replace(m, window=args.recent)
        restore(eng, snap)
        budget, window = splits.get(keep, (max(1, round(keep * len(ids))), None))
        t = time.perf_counter()
        if m_id == "streaming":
            import numpy as np

            scores = np.asarray(eng.seq.cells, dtype=np.float32)
        else:
            layers = recon if m_id == "kvzip" else window_layers
            scores = aggregate(pooled(layers, m.pool), agg, budget)
        if budget < len(ids):
            evict(eng, keep_cells(scores, budget, m.sinks, m.window))
        if window is not None:
            cut_window(eng, min(window, len(eng.seq)))
        if args.renumber:
            renumber_positions(eng)
        select_s = time.perf_counter() - t
        cell = cell_name(args, m_id, agg, keep)
        score_s = {"kvzip": recon_s, "snapkv": prefill_window_s, "streaming": 0.0}[m_id]
        if key(cell=cell) not in done:
            for qi, q in enumerate(sample.questions):
                emit(answer_row(eng, q, base, cell=cell, method=m_id, aggregate=agg, keep=keep, question=qi,
                                score_seconds=score_s, select_seconds=select_s, window_cells=window,
                                key=key(cell=cell)))  # fmt: skip
        # eviction + a quantized cache: the same positions (scored on the f16 context) evicted from the quantized one
        positions = set(eng.seq.cells)
        for kind, qsnap in quant_snaps.items():
            qcell = f"{cell}+{kind}"
            if m_id not in args.quant_methods or key(cell=qcell) in done:
                continue
            qe = plain[kind]
            restore(qe, qsnap)
            if len(positions) < len(qe.seq.cells):
                evict(qe, [i for i, p in enumerate(qe.seq.cells) if p in positions])
            if window is not None:
                cut_window(qe, min(window, len(qe.seq)))
            if args.renumber:
                renumber_positions(qe)
            for qi, q in enumerate(sample.questions):
                emit(answer_row(qe, q, base, cell=qcell, method=m_id, aggregate=agg, keep=keep, question=qi,
                                quant=kind, score_seconds=score_s, window_cells=window,
                                key=key(cell=qcell)))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--first", type=int, default=0, help="start at this sample (a second process on a later range)")
    p.add_argument("--tasks", default="niah_single:haystack=prose,niah_multikey")
    p.add_argument("--methods", default="kvzip,snapkv,streaming")
    p.add_argument("--aggregates", default=DEFAULT)
    p.add_argument("--keeps", default="0.5,0.25,0.1")
    p.add_argument("--baselines", default="f16,q8_0,q4_0", help="plain llama.cpp KV cache types")
    p.add_argument("--quant-evict", default="", help="quantized caches that also get each eviction (e.g. q8_0)")
    p.add_argument("--quant-methods", default="kvzip,streaming", help="methods whose evictions --quant-evict gets")
    p.add_argument("--seed", type=int, default=0, help="sample seed (0: reported; 1: validation)")
    p.add_argument("--pool", type=int, default=0, help="max-pool kernel for kvzip/snapkv scores (0: the method's own)")
    p.add_argument("--window", type=int, default=32)
    p.add_argument(
        "--recent",
        type=int,
        default=0,
        help="kvzip: the last N positions always kept (e.g. a sliding-window model's window; 0: its own)",
    )
    p.add_argument(
        "--hybrid",
        default="",
        choices=["", "full-first", "even", "full-only"],
        help="sliding-window models: keep = share of the state's bytes, split this way (default: one shared selection)",
    )
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--renumber", action="store_true")
    p.add_argument("--out", default="benchmarks/llamacpp_kv/results/retrieval.jsonl")
    args = p.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.aggregates = [a for a in args.aggregates.split(",") if a]
    args.keeps = [float(k) for k in args.keeps.split(",") if k]
    args.quant_evict = [q for q in args.quant_evict.split(",") if q]
    args.quant_methods = [q for q in args.quant_methods.split(",") if q]
    missing = [q for q in args.quant_evict if q not in args.baselines.split(",")]
    if missing:  # the evictions are applied to the baseline's own quantized context: none, no rows
        raise SystemExit(f"--quant-evict {','.join(missing)} needs the same type in --baselines (add it there)")
    tasks = [get_task(t) for t in args.tasks.split(",") if t]
    out_path = Path(args.out)
    done = done_keys(out_path)
    n_ctx = args.tokens + args.chunk + 512
    with open(out_path, "a") as out:
        out.write(json.dumps(meta(args)) + "\n")
        eng = Engine(args.model, Settings(n_ctx=n_ctx, threads=args.threads))
        plain = {}
        for kind in [b for b in args.baselines.split(",") if b]:
            fa = "off" if kind == "f16" else "on"  # a quantized V cache needs flash attention in llama.cpp
            plain[kind] = Engine(args.model, Settings(n_ctx=n_ctx, threads=args.threads, type_k=kind, type_v=kind,
                                                      flash_attn=fa, scoring=False))  # fmt: skip
        # sample-major: every cell grows together, so a cut run stays balanced
        for index in range(args.first, args.samples):
            for task in tasks:
                run_sample(args, eng, plain, task, index, done, out)
            print(f"sample {index + 1}/{args.samples} done", flush=True)


if __name__ == "__main__":
    main()
