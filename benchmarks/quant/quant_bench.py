"""RTN vs GPTQ vs GPTQ+rotation vs RSQ vs importance weights alone, per bit width, per model.

Each run quantizes a fresh copy of the model, then measures perplexity at 512 tokens, KL and top-1
agreement against the full-precision model on held-out text, and pass-key retrieval at ~1k tokens.
Rows are appended to a JSONL file as they finish, so a partial run still leaves its results.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/quant/quant_bench.py --model smollm2
    .venv/bin/python benchmarks/quant/quant_bench.py --table benchmarks/quant/results/*.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from tokensieve.stats import t_interval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import stamp

VARIANTS = {  # name -> (method, rotate, weights)
    "rtn": ("rtn", False, None),
    "gptq": ("gptq", False, "uniform"),
    "gptq+rot": ("gptq", True, "uniform"),
    "attncon": ("gptq", False, "attncon"),
    "rsq": ("rsq", True, "attncon"),
}
# a rotated variant may name its placement: gptq+rot@stream, rsq@inputs (default: auto, see quantize.rotate);
# rows always record the placement that ran, as variant@placement


def run(args: argparse.Namespace) -> None:
    from tokensieve.quantize.data import evaluation_windows
    from tokensieve.quantize.evaluate import compare, passkey
    from tokensieve.quantize.rotate import placement_of, rotate
    from tokensieve.quantize.run import Recipe, quantize
    from tokensieve.runtime.models import load_model

    torch.set_num_threads(1)
    full, tok = load_model(args.model)
    windows = evaluation_windows(tok, args.eval_windows, 512)  # the essays: outside the calibration's domain
    docs = evaluation_windows(tok, args.eval_windows, 512, domain="docs")  # the calibration's domain, other topics
    out = Path(args.out or f"benchmarks/quant/results/{args.model}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    rotated: dict[str, tuple[torch.nn.Module, float]] = {}  # placement -> the model, seconds to rotate

    def rotated_model(placement: str) -> tuple[torch.nn.Module, float]:
        if placement not in rotated:  # one rotation per placement, shared by every rotated run (timed once)
            t = time.perf_counter()
            m = copy.deepcopy(full)
            rotate(m, seed=0, placement=placement)
            rotated[placement] = (m, time.perf_counter() - t)
        return rotated[placement]

    pk_full = passkey(full, tok, args.passkey_tokens, args.depths, args.keys)
    plan = []  # the first config over every seed, then the others at the first seed, then their other seeds
    first, rest = args.configs[0], args.configs[1:]
    for stage in (
        [(first, s) for s in args.seeds],
        [(c, args.seeds[0]) for c in rest],
        [(c, s) for c in rest for s in args.seeds[1:]],
    ):
        for (bits, group), seed in stage:
            plan += [(bits, group, v, seed) for v in args.variants if v != "rtn" or seed == args.seeds[0]]
    for bits, group, v, seed in plan:
        base, _, where = v.partition("@")
        method, rot, weights = VARIANTS[base]
        placement = placement_of(full, where or "auto") if rot else ""
        source, rotate_s = rotated_model(placement) if rot else (full, 0.0)
        model = copy.deepcopy(source)
        recipe = Recipe(
            method,
            bits,
            group,
            weights=weights,
            rotate=False,
            n_calib=args.n_calib,
            calib_len=args.calib_len,
            seed=seed,
        )
        result, _ = quantize(model, tok, recipe)
        quality = compare(model, full, windows)
        in_domain = compare(model, full, docs)
        quality.passkey = passkey(model, tok, args.passkey_tokens, args.depths, args.keys)
        quality.passkey_full = pk_full
        quality.passkey_n = len(args.depths) * len(args.keys)
        row = {
            "model": args.model,
            "variant": f"{base}@{placement}" if rot else v,
            "placement": placement,
            "bits": bits,
            "group": group,
            "seed": seed,
            "quantize_s": round(result.seconds + (rotate_s if rot else 0.0), 1),
            "rotate_s": round(rotate_s, 1) if rot else 0.0,
            "calib_tokens": result.tokens,
            **quality.as_dict(),
            **{f"{k}_docs": v for k, v in in_domain.as_dict().items() if k in ("ppl", "ppl_full", "kl", "top1")},
        }
        with out.open("a") as f:
            f.write(json.dumps(stamp(row)) + "\n")
        print(json.dumps(row), flush=True)
        del model


def _mean(rs: list[dict], f: str) -> float:
    return sum(r[f] for r in rs) / len(rs)


def _mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean over seeds and a 95% Student-t half-width (nan for one seed)."""
    iv = t_interval(xs)
    return iv.estimate, iv.half


def table(paths: list[str]) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["bits"], r["group"], r["variant"]), []).append(r)
    order = list(VARIANTS)
    lines = [
        "| model | bits | group | method | seeds | prose ppl (full) | prose KL (95% CI) | prose top-1 "
        "| docs ppl (full) | docs KL (95% CI) | docs top-1 | passkey (full) | quant s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[0], -k[1], k[2], order.index(k[3].partition("@")[0]), k[3])):
        rs = groups[key]
        pk = f"{_mean(rs, 'passkey'):.2f} ({rs[0]['passkey_full']:.2f})"
        cells = []
        for suffix in ("", "_docs"):
            if f"kl{suffix}" not in rs[0]:  # rows from before the docs domain was measured
                cells += ["-", "-", "-"]
                continue
            m, ci = _mean_ci([r[f"kl{suffix}"] for r in rs])
            cells += [
                f"{_mean(rs, 'ppl' + suffix):.2f} ({rs[0]['ppl_full' + suffix]:.2f})",
                f"{m:.4f} ± {ci:.4f}",
                f"{_mean(rs, 'top1' + suffix):.3f}",
            ]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2] or 'row'} | {key[3]} | {len(rs)} | "
            + " | ".join(cells)
            + f" | {pk} | {_mean(rs, 'quantize_s'):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--configs", default="3:64,2:64,4:0", help="bits:group list (group 0 = per output channel)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--passkey-tokens", type=int, default=1024)
    p.add_argument("--depths", default="0.25,0.75")
    p.add_argument("--keys", default="68213,40917")
    p.add_argument("--out")
    p.add_argument("--table", nargs="+", help="print the markdown table of these JSONL files instead")
    a = p.parse_args()
    if a.table:
        print(table(a.table))
        return
    a.configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
    a.variants = a.variants.split(",")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.depths = tuple(float(d) for d in a.depths.split(","))
    a.keys = tuple(a.keys.split(","))
    run(a)


if __name__ == "__main__":
    main()
