"""The tables of benchmarks/quant_gguf/results/README.md from the rows run.py appended (run from the repo root):

  .venv/bin/python benchmarks/quant_gguf/table.py smollm2 gemma3-270m

Quality: one line per configuration (the file name without its ``-s<seed>``), the mean over calibration seeds
and its 95% Student-t interval (``tokensieve.stats.t_interval``; one seed: no interval), for the evaluation
windows of ``--eval-set``. Speed: the one-process alternating measurement (median of the rounds, [min, max]);
RSS from a fresh process per file.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from tokensieve.stats import t_interval

RESULTS = Path("benchmarks/quant_gguf/results")


def load(model: str) -> list[dict]:
    return [json.loads(x) for x in (RESULTS / f"{model}.jsonl").read_text().splitlines() if x.strip()]


def config(name: str) -> str:
    return re.sub(r"-s\d+\.gguf$", "", name).removesuffix(".gguf")


def cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    iv = t_interval(values)
    return fmt.format(iv.estimate) + (f" ± {fmt.format(iv.half)}" if iv.n > 1 else "")


def quality(model: str, eval_set: str) -> list[str]:
    rows = [r for r in load(model) if r.get("stage") == "eval" and r.get("eval_set", "prose-docs-w1") == eval_set]
    if not rows:
        return []
    d1, d2 = eval_set.split("-w")[0].split("-")
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[config(r["file"])].append(r)
    n1, n2 = (max(r.get(f"windows_{d}", r.get(f"positions_{d}", 0) // 511) for r in rows) for d in (d1, d2))
    out = [f"### {model}: quality ({d1}: {n1} windows, {d2}: {n2} windows of 512 tokens)", "",
           f"| configuration | seeds | MB | bits/weight | KL {d1} | KL {d2} | ppl {d1} | ppl {d2} | top-1 {d1} "
           f"| top-1 {d2} |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rs in sorted(groups.items(), key=lambda kv: -sum(r.get(f"kl_{d1}", 0) for r in kv[1]) / len(kv[1])):

        def c(key: str, fmt: str = "{:.3f}", rs: list[dict] = rs) -> str:
            return cell([r[key] for r in rs if key in r], fmt)

        out.append(f"| {name} | {len(rs)} | {rs[0]['bytes'] / 1e6:.1f} | {rs[0]['bpw']:.2f} | {c(f'kl_{d1}')} "
                   f"| {c(f'kl_{d2}')} | {c(f'ppl_{d1}', '{:.2f}')} | {c(f'ppl_{d2}', '{:.2f}')} "
                   f"| {c(f'top1_{d1}')} | {c(f'top1_{d2}')} |")  # fmt: skip
    return out


def speed(model: str) -> list[str]:
    rows = load(model)
    sp = {(r["file"], r["threads"]): r for r in rows if r.get("stage") == "speed3"}
    rss = {r["file"]: r for r in rows if r.get("stage") == "rss"}
    size = {r["file"]: r["bytes"] for r in rows if "bytes" in r and "file" in r}
    if not sp:
        return []
    f32 = rss.get("F32.gguf", {})
    ups = sorted({r["uptime"] for r in sp.values()})
    out = [f"### {model}: size, speed, memory", "",
           f"uptime at the end of the timing rounds: `{ups[-1]}`", "",
           "| file | MB | prefill tok/s 1t | prefill tok/s 2t | decode tok/s 1t | decode tok/s 2t "
           "| peak RSS MB | RSS minus pre-load MB | RSS / F32's (raw, minus pre-load) |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in sorted({f for f, _ in sp}, key=lambda f: -size.get(f, 0)):

        def s(t: int, k: str, f: str = f) -> str:
            r = sp.get((f, t))
            if not r:
                return "-"
            lo, hi = r[k.replace("tok_s", "range")]
            return f"{r[k]:.1f} [{lo:.1f}, {hi:.1f}]"

        m = rss.get(f, {})
        ratio = (f"{m['rss_mb'] / f32['rss_mb']:.2f}, {m['rss_model_mb'] / f32['rss_model_mb']:.2f}"
                 if m and f32 else "-")  # fmt: skip
        mb = f"{size[f] / 1e6:.1f}" if f in size else "-"
        out.append(f"| {f} | {mb} | {s(1, 'prefill_tok_s')} | {s(2, 'prefill_tok_s')} | {s(1, 'decode_tok_s')} "
                   f"| {s(2, 'decode_tok_s')} | {m.get('rss_mb', 0):.0f} | {m.get('rss_model_mb', 0):.0f} "
                   f"| {ratio} |")  # fmt: skip
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--eval-set", action="append", help="eval_set of the quality rows (repeatable)")
    a = p.parse_args()
    sets = a.eval_set or ["essays-docs-w4", "prose-docs-w1"]
    print("\n".join(line for m in a.models for es in sets for line in [*quality(m, es), ""]))
    print("\n".join(line for m in a.models for line in [*speed(m), ""]))
