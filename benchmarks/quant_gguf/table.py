"""The tables of benchmarks/quant_gguf/results/README.md from the rows run.py appended (run from the repo root):

  .venv/bin/python benchmarks/quant_gguf/table.py smollm2 gemma3-270m
  .venv/bin/python benchmarks/quant_gguf/table.py smollm2 gemma3-270m --plot benchmarks/quant_gguf/results/quality.png

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

from tokensieve.plotstyle import pyplot, save, styles
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
    rows = list({r["file"]: r for r in rows}.values())  # a file evaluated twice (overlapping runs) counts once
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


def plot(models: list[str], path: Path) -> Path:
    """KL to full precision per configuration, one panel per model, on each model's most-windowed evaluation set:
    a bar per domain (mean over calibration seeds), every seed a dot (no interval is drawn: 1-2 seeds)."""
    plt = pyplot()
    panels = []
    for model in models:
        evals = [r for r in load(model) if r.get("stage") == "eval" and not r["file"].startswith("F")]
        es = max({r.get("eval_set", "prose-docs-w1") for r in evals}, key=lambda e: int(e.rsplit("-w", 1)[1]))
        rows = [r for r in evals if r.get("eval_set", "prose-docs-w1") == es]
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            groups[config(r["file"])].append(r)
        panels.append((model, es, groups))
    height = max(len(g) for *_, g in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 0.55 * height + 2.2), squeeze=False)
    for ax, (model, es, groups) in zip(axes[0], panels, strict=True):
        domains = es.split("-w")[0].split("-")
        look = styles(domains)
        names = sorted(groups, key=lambda g: sum(r[f"kl_{domains[0]}"] for r in groups[g]) / len(groups[g]))
        h = 0.8 / len(domains)
        for j, d in enumerate(domains):
            for i, name in enumerate(names):
                ks = [r[f"kl_{d}"] for r in groups[name]]
                y = i + (j - (len(domains) - 1) / 2) * h
                ax.barh(y, sum(ks) / len(ks), h * 0.9, color=look[d]["color"], alpha=0.7,
                        label=f"{d} text" if i == 0 else None)  # fmt: skip
                ax.scatter(ks, [y] * len(ks), color="black", s=10, zorder=3)
        labels = [f"{n}  ({groups[n][0]['bytes'] / 1e6:.0f} MB, {groups[n][0]['bpw']:.2f} bpw, "
                  f"{len(groups[n])} seed{'s' if len(groups[n]) > 1 else ''})" for n in names]  # fmt: skip
        ax.set_yticks(range(len(names)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("KL to full precision (nats/token; lower is better)")
        ax.set_title(f"{model}, Q3_K, eval set {es}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("GGUF quantization quality (bars: mean over calibration seeds; dots: each seed; SmolLM2's full "
                 "precision is its dequantized Q4_1)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--eval-set", action="append", help="eval_set of the quality rows (repeatable)")
    p.add_argument("--plot", help="write the quality figure here (and print nothing else)")
    a = p.parse_args()
    if a.plot:
        print(plot(a.models, Path(a.plot)))
        raise SystemExit(0)
    sets = a.eval_set or ["essays-docs-w4", "prose-docs-w1"]
    print("\n".join(line for m in a.models for es in sets for line in [*quality(m, es), ""]))
    print("\n".join(line for m in a.models for line in [*speed(m), ""]))
