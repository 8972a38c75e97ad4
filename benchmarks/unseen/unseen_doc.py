"""Regenerate the tables of docs/unseen.md and README's question-unseen row from the committed results files: no
figure in them is typed by hand (issue 26, item 11). No model runs: it reads ``results.jsonl`` files only.

    .venv/bin/python benchmarks/unseen/unseen_doc.py            # rewrite docs/unseen.md and README.md
    .venv/bin/python benchmarks/unseen/unseen_doc.py --check    # exit 1 if either is out of date (CI)

Each generated part of docs/unseen.md sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
(NAME is a key of ``BLOCKS``); README's row is the table row whose first cell is ``README_ROW``. Intervals come
from ``tokensieve.stats`` (the rule is named under each table): the share of the full cache's score is a paired
bootstrap of the ratio of means over the same samples; answers right are Wilson; a difference between two methods
on the same samples is a paired bootstrap; fidelity tokens of one context are one cluster (per-sample means,
bootstrapped over samples).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from statistics import mean

from tokensieve.stats import bootstrap, paired_bootstrap, wilson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # unseen_summary.py beside this file
from _common import fill_block
from unseen_summary import common_samples, group, load, mean_over_tasks

ROOT = Path(__file__).resolve().parents[2]
B = 2000
MEAN_TASKS = ("niah_single:haystack=prose", "niah_multikey")
HEADLINE = ("kvzip", "kvzip:precision=bf16", "kvzip+", "span:inner=kvzip", "kvzip:scope=layer", "keydiff", "lagkv",
            "surprise", "expected_attention", "streaming", "snapkv")  # fmt: skip
CHEAP = ("keydiff", "lagkv", "surprise", "expected_attention")  # the best-of-4 row picks among these after the fact
KEEPS = (0.5, 0.25, 0.1)
README_ROW = "| KV cache, question unseen ([unseen](docs/unseen.md)) |"
GEMMA_ROW = (
    "| KV cache on Gemma-3 270M, question unseen ([unseen](docs/unseen.md#hybrid-attention-models-gemma-3-issue-27)) |"
)


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def ci(lo: float, hi: float) -> str:
    return f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def rows_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def headline_rows(folder: Path) -> tuple[int, float, dict[tuple[str, float], tuple]]:
    """(samples per task, full cache's mean, {(method, keep): (share, lo, hi)}) over the two needle tasks."""
    by, groups = group(load([folder]))
    tasks = {}
    for (task, _length), keys in groups.items():
        if task in MEAN_TASKS:
            kept, common = common_samples(by, keys)
            tasks[task] = {(k[2], k[3]): {s: by[k][s]["score"] for s in common} for k in kept}
    rows = mean_over_tasks(tasks)
    full = next(r[2] for r in rows if r[0] == "full")
    return rows[0][-1], full, {(r[0], r[1]): (r[5], r[6], r[7]) for r in rows}


def best_cheap(rel: dict) -> dict[float, tuple[str, float]]:
    return {k: max(((m, rel[(m, k)][0]) for m in CHEAP), key=lambda t: t[1]) for k in KEEPS}


def headline(folders: dict[int, Path]) -> list[str]:
    out = [
        "| length | n per task | full cache | method | keep 0.5 | keep 0.25 | keep 0.1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for length, folder in folders.items():
        n, full, rel = headline_rows(folder)
        first = f"| {length} | {n} | {full:.3f} |"
        for m in HEADLINE:
            cells = " | ".join(f"{pct(rel[(m, k)][0])} {ci(*rel[(m, k)][1:])}" for k in KEEPS)
            out.append(f"{first} `{m}` | {cells} |")
            first = "| | | |"
        best = best_cheap(rel)
        out.append("| | | | best-of-4 cheap, picked after the fact (biased upward) | "
                   + " | ".join(f"{pct(v)} (`{m}`)" for m, v in best.values()) + " |")  # fmt: skip
    note = ("Share of the full cache's score, mean over the two tasks per sample index; 95% paired bootstrap of the "
            "ratio of means over sample indices (2,000 resamples, `tokensieve.stats.paired_bootstrap`).")  # fmt: skip
    out += ["", note]
    return out


def right(folder: Path, task: str, method: str, keep: float) -> tuple[int, int]:
    xs = [c["score"] for c in load([folder]) if c["task"] == task and c["label"] == method and c["keep"] == keep]
    return int(sum(xs)), len(xs)


def prose(folders: dict[int, Path]) -> list[str]:
    """The prose-needle and multi-question sentences."""
    task = "niah_single:haystack=prose"
    parts = []
    for length in sorted(folders, reverse=True):
        k = [right(folders[length], task, "kvzip", kp) for kp in KEEPS]
        f = right(folders[length], task, "full", 1.0)
        w = wilson(*k[1])
        parts.append(f"at {length // 1024}k `kvzip` answers {k[0][0]}/{k[0][1]}, {k[1][0]}/{k[1][1]} (Wilson "
                     f"[{w.lo:.2f}, {w.hi:.2f}]) and {k[2][0]}/{k[2][1]} at keep 0.5 / 0.25 / 0.1, the full cache "
                     f"{f[0]}/{f[1]}")  # fmt: skip
    lines = [f"On the prose needle alone (the issue's failure mode) {'; '.join(parts)}."]
    by, groups = group(load([folders[1024]]))
    keys = groups.get(("niah_multiask:haystack=prose", 1024))
    if keys:
        kept, common = common_samples(by, keys)
        sc = {(k[2], k[3]): mean(by[k][s]["score"] for s in common) for k in kept}
        cheap = [sc[(m, 0.25)] for m in CHEAP if (m, 0.25) in sc]
        lines.append(f"On the multi-question task (1k, {len(common)} contexts x 3 questions) `kvzip` scores "
                     f"{sc[('kvzip', 0.25)]:.3f} at keep 0.25 (full cache {sc[('full', 1.0)]:.3f}) and "
                     f"{sc[('kvzip', 0.1)]:.3f} at keep 0.1; the cheap scores {min(cheap):.2f}-{max(cheap):.2f} at "
                     f"keep 0.25 ({len(common)} contexts: a 0.1 difference is within noise).")  # fmt: skip
    return [" ".join(lines)]


def equal_bytes(folder: Path) -> list[str]:
    cells = load([folder])
    by: dict[tuple[str, float], dict[int, dict]] = defaultdict(dict)
    for c in cells:
        by[(c["label"], c["keep"])][c["sample"]] = c
    mikv = "mikv:importance=kvzip:budget_of=bytes"
    out = ["| keep | bytes held (evict / mikv) | `kvzip` (evict, global top-k) | `mikv`, kvzip importance, INT2 rest "
           "| kvzip - mikv (paired bootstrap) |", "|---|---|---|---|---|"]  # fmt: skip
    for k in KEEPS:
        a, b = by[("kvzip", k)], by[(mikv, k)]
        idx = sorted(set(a) & set(b))
        xa, xb = [a[i]["score"] for i in idx], [b[i]["score"] for i in idx]
        ba = mean(a[i]["kv_bytes"] / a[i]["kv_bytes_full"] for i in idx)
        bb = mean(b[i]["kv_bytes"] / b[i]["kv_bytes_full"] for i in idx)
        wa, wb = wilson(sum(xa), len(xa)), wilson(sum(xb), len(xb))
        d = paired_bootstrap(xa, xb, resamples=B)
        out.append(
            f"| {k} | {ba:.3f} / {bb:.3f} | {sum(xa):.0f}/{len(xa)} [{wa.lo:.2f}, {wa.hi:.2f}] | "
            f"{sum(xb):.0f}/{len(xb)} [{wb.lo:.2f}, {wb.hi:.2f}] | {d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] |"
        )
    out += ["", "Answers right with Wilson 95% intervals; the difference is a paired bootstrap over the same samples."]
    return out


def kvpress(folder: Path) -> list[str]:
    cells = load([folder])
    sc: dict[tuple[str, float], list[float]] = defaultdict(list)
    for c in cells:
        sc[(c["label"], c["keep"])].append(c["score"])
    n = len(sc[("full", 1.0)])

    def f(m: str, k: float) -> str:
        xs = sc[(m, k)]
        return f"{sum(xs):.0f}/{len(xs)}"

    out = ["| keep | kvpress KVzip | tokensieve `kvzip` | `kvzip:precision=bf16` | kvpress KeyDiff / ours | "
           "kvpress LagKV / ours | kvpress ExpectedAttention / ours |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for k in KEEPS:
        pairs = " | ".join(f"{f('kvpress:' + m, k)} / {f(m, k)}" for m in ("keydiff", "lagkv", "expected_attention"))
        out.append(f"| {k} | {f('kvpress:kvzip', k)} | {f('kvzip', k)} | {f('kvzip:precision=bf16', k)} | {pairs} |")
    out += ["", f"Answers right of {n} samples (the full cache: {f('full', 1.0)}); no interval is given: at n = {n} "
            f"a Wilson interval around 3/{n} spans [{wilson(3, n).lo:.2f}, {wilson(3, n).hi:.2f}]."]  # fmt: skip
    rows = rows_jsonl(folder / "results.jsonl")
    wall: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("type") == "cell" and r["engine"] == "kvpress":
            wall[r["method"]].append(r["wall_seconds"])
    ts = [r["wall_seconds"] / r["cells"] for r in rows if r.get("type") == "sample" and r["engine"] == "tokensieve"]
    kz, full = mean(wall["kvpress:kvzip"]), mean(wall["full"])
    cheap = [mean(v) for m, v in wall.items() if m not in ("full", "kvpress:kvzip")]
    n_kvp = sum(len(v) for m, v in wall.items() if m != "full")
    speedup = sum(sum(v) for m, v in wall.items() if m != "full") / (mean(ts) * n_kvp)
    out += ["", f"Wall time per cell in the same run (mean over {n} samples, one timing each): kvpress's KVzip press "
            f"{kz:.1f} s (its pipeline re-runs prefill and reconstruction for every ratio; its full cache {full:.2f} s,"
            " "
            f"so {kz / full:.1f}x), kvpress's cheap presses {min(cheap):.1f}-{max(cheap):.1f} s; tokensieve's whole "
            f"sweep {mean(ts):.2f} s per cell (one prefill and one reconstruction per sample, shared by every keep): "
            f"{speedup:.1f}x faster over all {n_kvp} kvpress cells."]  # fmt: skip
    return out


def fidelity(folder: Path) -> list[str]:
    cells = load([folder])
    sc: dict[tuple[str, float], list[float]] = defaultdict(list)
    for c in sorted(cells, key=lambda c: c["sample"]):
        sc[(c["label"], c["keep"])].append(c["metrics"]["top1"])
    methods = sorted({m for m, _ in sc if m != "full"}, key=lambda m: (-mean(sc[(m, 0.25)]), m))  # ties: by name
    n = len(sc[("full", 1.0)])
    out = ["| method | top-1 keep 0.5 | 0.25 | 0.1 |", "|---|---|---|---|"]
    for m in methods:
        cells_ = []
        for k in KEEPS:
            iv = bootstrap(sc[(m, k)], resamples=B)
            cells_.append(f"{100 * iv.estimate:.1f}% [{100 * iv.lo:.0f}, {100 * iv.hi:.0f}]")
        out.append(f"| `{m}` | {' | '.join(cells_)} |")
    best = max(methods, key=lambda m: mean(sc[(m, 0.25)]))
    out += ["", f"Mean top-1 agreement over {n} samples (each sample's continuation tokens are one cluster: per-sample "
            f"means, 95% bootstrap over samples). Goal (top-1 >= 95% at keep 0.25): best `{best}` "
            f"{100 * mean(sc[(best, 0.25)]):.1f}%, `kvzip` {100 * mean(sc[('kvzip', 0.25)]):.1f}%: "
            + ("**reached**." if mean(sc[(best, 0.25)]) >= 0.95 else "**missed**.")]  # fmt: skip
    return out


def cost(folder: Path) -> list[str]:
    rows = [r for sub in ("1k_2k", "4k") for r in rows_jsonl(folder / sub / "results.jsonl")]
    lengths = sorted({r["length"] for r in rows})
    prefill = {r["length"]: r["prefill_s"] for r in rows}
    ratio = {(r["method"], r["length"]): r["ratio"] for r in rows}
    methods = sorted({r["method"] for r in rows}, key=lambda m: (-ratio[(m, 2048)], m))
    head = " | ".join(f"{n // 1024}k (prefill {prefill[n]:.2f} s)" for n in lengths)
    out = [f"| method | {head} |", "|---|" + "---|" * len(lengths)]
    out += [f"| `{m}` | " + " | ".join(f"{ratio[(m, n)]:.2f}x" for n in lengths) + " |" for m in methods]
    out += ["", "One timing per cell (`--repeats 1`), one thread, on the shared CPU: a ratio within one run is what to "
            "quote, not the seconds."]  # fmt: skip
    return out


def scores_cost(folder: Path) -> list[str]:
    rows = sorted(rows_jsonl(folder / "scores" / "results.jsonl"), key=lambda r: r["ratio"])
    window = {"streaming", "knorm", "random", "tova", "snapkv"}  # window and probe scores: the 5% goal
    out = ["| score | compression / prefill at 2k | goal | |", "|---|---|---|---|"]
    for r in rows:
        goal = 0.05 if r["method"] in window else 0.15
        out.append(f"| `{r['method']}` | {r['ratio']:.3f} | <= {goal} | "
                   f"{'reached' if r['ratio'] <= goal else '**missed**'} |")  # fmt: skip
    return out


def copy_tables(path: Path, heading: str) -> list[str]:
    """The tables under ``heading`` in a script-written summary (up to the next heading or the provenance)."""
    text = path.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("#") and heading in line)
    out = [text[start].replace("## ", "#### ", 1)]
    for line in text[start + 1 :]:
        if line.startswith("#") or line.startswith("Command:"):
            break
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


def scope(path: Path) -> list[str]:
    """scope_check.py's sample count and table (its own script output, copied)."""
    text = path.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("Samples where"))
    end = next(i for i in range(start, len(text)) if text[i].startswith("|") and not text[i + 1].startswith("|"))
    return text[start : end + 1]


UNSEEN = ROOT / "benchmarks/unseen/results"
GEMMA = ROOT / "benchmarks/gemma3_hybrid/results/gemma3_hybrid/unseen.md"
BLOCKS: dict[str, Callable[[], list[str]]] = {
    "gemma-retrieval": lambda: copy_tables(GEMMA, "## retrieval"),
    "gemma-fidelity": lambda: copy_tables(GEMMA, "## fidelity"),
    "headline": lambda: headline({1024: UNSEEN / "1024", 2048: UNSEEN / "2048"}),
    "prose": lambda: prose({1024: UNSEEN / "1024", 2048: UNSEEN / "2048"}),
    "scope": lambda: scope(UNSEEN / "1024_seed1/scope_check.md"),
    "bytes": lambda: equal_bytes(ROOT / "benchmarks/unseen_bytes/results"),
    "kvpress": lambda: kvpress(ROOT / "benchmarks/unseen_kvpress/results"),
    "fidelity": lambda: fidelity(ROOT / "benchmarks/unseen_fidelity/results"),
    "cost": lambda: cost(ROOT / "benchmarks/unseen_cost/results"),
    "scores-cost": lambda: scores_cost(ROOT / "benchmarks/unseen_cost/results"),
}


def readme_row() -> str:
    n, _full, rel = headline_rows(UNSEEN / "2048")
    k = [rel[("kvzip", kp)] for kp in KEEPS]
    best = best_cheap(rel)
    kd = " / ".join(pct(rel[("keydiff", kp)][0]) for kp in KEEPS)
    st = " / ".join(pct(rel[("streaming", kp)][0]) for kp in KEEPS)
    c, w = right(UNSEEN / "2048", "niah_single:haystack=prose", "kvzip", 0.25), right(
        UNSEEN / "2048", "niah_single:haystack=prose", "full", 1.0)  # fmt: skip
    wall: dict[str, list[float]] = defaultdict(list)
    for r in rows_jsonl(ROOT / "benchmarks/unseen_kvpress/results/results.jsonl"):
        if r.get("type") == "cell" and r["engine"] == "kvpress":
            wall[r["method"]].append(r["wall_seconds"])
    cost_rows = {(r["method"], r["length"]): r["ratio"]
                 for r in rows_jsonl(ROOT / "benchmarks/unseen_cost/results/1k_2k/results.jsonl")}  # fmt: skip
    return (
        f"{README_ROW} mean over two needle tasks at 2k tokens, {n} samples each, share of the full cache's score "
        f"(paired 95% bootstrap): `kvzip` (context reconstruction, one global top-k; the default of `generate` and "
        f"the demo) {pct(k[0][0])} {ci(*k[0][1:])} at keep 0.5, {pct(k[1][0])} {ci(*k[1][1:])} at 0.25, "
        f"{pct(k[2][0])} {ci(*k[2][1:])} at 0.1; `keydiff` (the cheap score named beforehand) {kd}; the best of "
        f"4 cheap scores at each keep, picked after the fact (biased upward) "
        f"{' / '.join(pct(v) for _, v in best.values())}; streaming {st}. The prose needle alone: {c[0]}/{c[1]} "
        f"at keep 0.25, the full cache {w[0]}/{w[1]}. The pass costs {cost_rows[('kvzip', 2048)]:.1f}x the "
        f"prefill at 2k in fp32, {cost_rows[('kvzip:precision=bf16', 2048)]:.1f}x with `precision=bf16` (same "
        f"scores); kvpress's KVzip press "
        f"{mean(wall['kvpress:kvzip']) / mean(wall['full']):.1f}x its own full-cache cell ([tables generated by script]"
        f"(benchmarks/unseen/unseen_doc.py)) |"
    )


def gemma_row() -> str:
    """README's Gemma-3 row from hybrid_table.py's rows (``unseen.jsonl``)."""
    every = rows_jsonl(GEMMA.with_suffix(".jsonl"))
    at = {(r["method"], r["length"], r["keep"]): r for r in every if r["kind"] == "retrieval"}
    fid = {(r["method"], r["length"], r["keep"]): r for r in every if r["kind"] == "fidelity"}
    mikv = "mikv:importance=kvzip:budget_of=bytes"

    def cells(m: str, length: int, with_ci: bool) -> str:
        rs = [at[(m, length, k)] for k in KEEPS]
        return " / ".join(pct(r["share"]) + (f" {ci(r['lo'], r['hi'])}" if with_ci else "") for r in rs)

    n = {length: at[("kvzip", length, 0.5)]["n"] for length in (1024, 2048)}
    b = " / ".join(f"{at[('kvzip', 1024, k)]['bytes']:.3f}" for k in KEEPS)
    goal5 = {length: at[("kvzip", length, 0.5)]["share"] >= 0.95 for length in (1024, 2048)}
    goal25 = max(at[(m, length, 0.25)]["share"] for m in ("kvzip", mikv) for length in (1024, 2048)) >= 0.85
    return (
        f"{GEMMA_ROW} `keep` = share of the whole cache's bytes (sliding windows cut first), measured {b}; two "
        f"needle tasks, {n[1024] // 2} samples each at 1k and {n[2048] // 2} at 2k (pooled), share of the full "
        f"cache's score (paired 95% "
        f"bootstrap): `kvzip` {cells('kvzip', 1024, True)} at 1k, {cells('kvzip', 2048, True)} at 2k; `mikv` "
        f"(kvzip importance, same bytes) {cells(mikv, 1024, False)} and {cells(mikv, 2048, False)}; cheap scores "
        f"at 0.25: keydiff {pct(at[('keydiff', 1024, 0.25)]['share'])} / {pct(at[('keydiff', 2048, 0.25)]['share'])}"
        f", snapkv {pct(at[('snapkv', 1024, 0.25)]['share'])} / {pct(at[('snapkv', 2048, 0.25)]['share'])}; fidelity "
        f"({fid[('kvzip', 1024, 0.25)]['n']} samples per length), top-1 agreement at 0.25 as a share of the full "
        f"cache's: kvzip {pct(fid[('kvzip', 1024, 0.25)]['share'])} / {pct(fid[('kvzip', 2048, 0.25)]['share'])}, "
        f"snapkv {pct(fid[('snapkv', 1024, 0.25)]['share'])} / {pct(fid[('snapkv', 2048, 0.25)]['share'])}. "
        f"Goals: 95% at 0.5 {'reached (point estimate)' if goal5[1024] else 'missed'} at 1k, "
        f"{'reached (point estimate)' if goal5[2048] else 'missed'} at 2k; 85% at 0.25 "
        f"{'reached' if goal25 else 'missed'}. The "
        "demo's 2k pass key is lost by every split up to 0.75 of the bytes. Before: keep=0.25 held 0.74-0.875 of "
        "the bytes |"
    )


def render_doc(text: str) -> str:
    for name, make in BLOCKS.items():
        text = fill_block(text, name, make())
    return text


def render_readme(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for first, make in ((README_ROW, readme_row), (GEMMA_ROW, gemma_row)):
        hits = [i for i, line in enumerate(lines) if line.startswith(first)]
        if len(hits) != 1:
            raise SystemExit(f"unseen_doc: README.md needs exactly one row starting {first!r}, found {len(hits)}")
        lines[hits[0]] = make() + "\n"
    return "".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/unseen.md or README.md is out of date")
    args = ap.parse_args()
    stale = []
    for path, render in ((ROOT / "docs/unseen.md", render_doc), (ROOT / "README.md", render_readme)):
        old = path.read_text()
        new = render(old)
        if new != old:
            stale.append(path.name)
            if not args.check:
                path.write_text(new)
    print(readme_row())
    if args.check and stale:
        raise SystemExit(f"out of date: {', '.join(stale)} (run benchmarks/unseen/unseen_doc.py)")


if __name__ == "__main__":
    main()
