"""The tables of ``summary.md`` from the results files: score per cell with a 95% Wilson interval
(``tokensieve.stats``), bytes, speeds, against the full cache; each table names the commands, commits and versions
of the files it reads. Rows repeated by a resumed or overlapping run count once (by key and question).

    .venv/bin/python benchmarks/llamacpp_kv/summarize.py > /tmp/tables.md
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tokensieve.measure.tasks.base import Item, Question, score
from tokensieve.stats import paired_bootstrap, wilson

RESULTS = Path(__file__).parent / "results"
MODELS = ("smollm2", "gemma3-270m")


def mean(xs: list) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def load(pattern: str) -> tuple[list[dict], list[dict]]:
    metas, rows, seen = [], [], set()
    for path in sorted(RESULTS.glob(pattern)):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("type") == "meta":
                metas.append({**r, "file": path.name})
                continue
            k = (path.name.split("_")[0], r.get("key"), r.get("question"), r.get("cell"))
            if r.get("key") is not None and k in seen:
                continue
            seen.add(k)
            rows.append(r)
    return metas, rows


def provenance(metas: list[dict]) -> list[str]:
    out, seen = [], set()
    for m in metas:
        cmd = m.get("command") or f"{m['file']}: {json.dumps(m.get('args'))}"
        if cmd in seen:
            continue
        seen.add(cmd)
        ver = ", ".join(f"{k} {m[k]}" for k in ("llama_cpp_python", "openvino_genai", "torch", "python") if k in m)
        commit = (m.get("commit") or "")[:10]
        load_avg = f", load average {m['loadavg']}" if "loadavg" in m else ""
        out.append(f"- `{cmd}`  \n  ({m['file']}; commit {commit or '-'}, {ver}, {m.get('machine', '')}, "
                   f"started {m.get('time')}{load_avg})")  # fmt: skip
    return out


def ci(s: list[float]) -> str:
    iv = wilson(sum(s), len(s))
    return f"{mean(s):.2f} [{iv.lo:.2f}, {iv.hi:.2f}]"


def validation(model: str) -> list[str]:
    metas, rows = load("choose_aggregate*.jsonl")
    rows = [r for r in rows if r.get("model") == model]
    metas = [m for m in metas if (m.get("args") or {}).get("model", "smollm2") == model]
    full = {r["index"]: r["score"] for r in rows if r["cell"] == "full"}
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["cell"] != "full":
            groups[r["cell"]].append(r)
    lines = [f"Validation samples (seed 1): {len(full)}; the full cache answers {sum(full.values()):.0f} of them.", "",
             "| aggregate | skip_first | pool | keep | n | answer tokens kept (mean) | all kept | answered (n) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for cell, g in sorted(groups.items(), key=lambda kv: (-float(kv[0].split("/")[-1]), kv[0])):
        by_index: dict[int, dict] = {}
        for r in g:
            by_index.setdefault(r["index"], r)
        kept = [r["needle_kept"] for r in by_index.values()]
        ans = {r["index"]: r["score"] for r in g if "score" in r}
        a = f"{sum(ans.values()):.0f}/{len(ans)}" if ans else "-"
        how, skip, *pool, keep = cell.split("/")  # pool ("p31") only where a run tried kernels
        lines.append(
            f"| {how} | {skip} | {pool[0][1:] if pool else 1} | {keep} | {len(kept)} | {mean(kept):.2f} | "
            f"{sum(k == 1 for k in kept)} | {a} |"
        )
    return [*provenance(metas), "", *lines]


def retrieval(model: str, tokens: int, pattern: str = "grid") -> list[str]:
    """One table per model x length: ``grid_*`` files (the reported seed, with the HF path's row), or another
    prefix's files (e.g. ``choose_recent``: validation samples, seed 1)."""
    metas, rows = load(f"{pattern}_{model.split('-')[0]}_{tokens // 1000}k_*.jsonl")
    if pattern == "grid":
        hm, hrows = load(f"hf_{model.split('-')[0]}_{tokens // 1000}k.jsonl")
        rows += hrows
        metas += hm
    if not rows:
        return []
    groups: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple] = set()
    for r in rows:
        cell = r["cell"]
        if cell.startswith("streaming/"):  # streaming reads no scores: the aggregate in its name means nothing
            _, _agg, rest = cell.split("/", 2)
            cell = f"streaming/{rest}"
            # runs that named different aggregates measured the same streaming cell: count each sample once
            sample = (cell, r["index"], r.get("question"))
            if sample in seen:
                continue
            seen.add(sample)
        groups[cell].append(r)
    f16 = groups.get("f16", [])
    full = mean([r["score"] for r in f16])
    full_bytes = mean([r["state_bytes"] for r in f16])
    prefill = mean([r["prefill_seconds"] for r in f16])
    lines = ["| cell (method/aggregate/keep[+KV type]) | n | score [95% CI] | vs full | kept | state MB | bytes vs f16 "
             "| decode tok/s | score s / prefill s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for cell, g in sorted(groups.items()):
        s = [r["score"] for r in g]
        sb = mean([r.get("state_bytes") for r in g])
        sc = mean([r.get("score_seconds") for r in g])
        cost = f"{sc / prefill:.2f}" if prefill and not math.isnan(sc) else "-"
        by = f"{sb / full_bytes:.3f}" if not math.isnan(sb) else "-"
        hf_share = mean([r["kv_bytes"] / r["kv_bytes_full"] for r in g if r.get("kv_bytes_full")])
        if not math.isnan(hf_share):  # the HF path's own cache: its bytes against its own full cache (tensors)
            by = f"{hf_share:.3f} (HF)"
        tok_s = mean([r.get("decode_tok_s") for r in g])
        vs = mean(s) / full if full else float("nan")
        kept = mean([r.get("kept") for r in g])
        row = f"| {cell} | {len(s)} | {ci(s)} | {vs:.2f} | {kept:.0f} | {sb / 1e6:.2f} | {by} | {tok_s:.1f} | {cost} |"
        lines.append(row.replace("| nan |", "| - |").replace("| nan |", "| - |"))
    per_cell: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("state_bytes") and r.get("kept"):
            kind = r.get("quant") or (r["cell"] if r["cell"] in ("q8_0", "q4_0") else "f16")
            per_cell[kind].append(r["state_bytes"] / r["kept"])
    # equal bytes: eviction + q8_0 against plain q4_0 on the same samples (paired bootstrap of the difference)
    for cell in sorted(c for c in groups if c.endswith("/0.5+q8_0") and "q4_0" in groups):
        q4 = {(r["index"], r.get("question")): r["score"] for r in groups["q4_0"]}
        pairs = [(r["score"], q4[(r["index"], r.get("question"))]) for r in groups[cell]
                 if (r["index"], r.get("question")) in q4]  # fmt: skip
        if len(pairs) >= 2:
            d = paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs])
            lines += ["", f"{cell} minus q4_0 on the same {d.n} samples: {d.estimate:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] "
                      "(paired bootstrap, 95%)."]  # fmt: skip
    spans = "; ".join(f"{k}: {min(v):,.0f}-{max(v):,.0f} B" for k, v in sorted(per_cell.items()))
    lines += ["", f"State bytes per kept cell (llama.cpp's own sequence-state size / kept tokens, every row): {spans}."]
    return [*provenance(metas), "", *lines]


def longdoc() -> list[str]:
    metas, rows = load("longdoc_*.jsonl")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        pool = "-" if r["method"] in ("full", "context-shift") else (r.get("pool") or "own")  # they read no scores
        groups[(r.get("seed", 0), r["model"], r["tokens"], r["budget"], r["method"], pool, r["renumber"])].append(r)
    lines = ["| seed | model | document tokens | cache budget | method | pool | renumbered | n | score [95% CI] "
             "| seconds | state MB | kept | VmHWM MB |", "|---" * 13 + "|"]  # fmt: skip
    for (seed, m, t, b, meth, pool, ren), g in sorted(groups.items(), key=str):
        s = [r["score"] for r in g]
        hwm = max((r.get("vm_hwm_kb") or 0) for r in g) / 1024
        lines.append(f"| {seed} | {m} | {t} | {b if meth != 'full' else '-'} | {meth} | {pool} | {ren} | {len(s)} | "
                     f"{ci(s)} | "
                     f"{mean([r['seconds'] for r in g]):.0f} | {mean([r['state_bytes'] for r in g]) / 1e6:.2f} | "
                     f"{mean([r.get('kept') for r in g]):.0f} | {hwm:.0f} |")  # fmt: skip
    return [*provenance(metas), "", *lines]


def speed() -> list[str]:
    metas, rows = load("speed*.jsonl")
    scoring = [r for r in rows if r.get("kind") == "scoring"]
    decode: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "decode":
            decode[(r["model"], r["tokens"], r["threads"], r["prefill_seconds"])].append(r)  # one row per run
    lines = ["| model | context tokens | kept | threads | reps | full tok/s (median) | compressed tok/s (median) | "
             "ratio median [min, max] | load average |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (m, _t, th, _run), g in sorted(decode.items(), key=lambda kv: (*kv[0][:3], -kv[1][0]["loadavg"][0])):
        ratios = [r["ratio"] for r in g]
        loads = [r["loadavg"][0] for r in g]
        lines.append(f"| {m} | {g[0]['context_tokens']} | {g[0]['kept']} | {th} | {len(g)} | "
                     f"{statistics.median(r['full_tok_s'] for r in g):.1f} | "
                     f"{statistics.median(r['compressed_tok_s'] for r in g):.1f} | {statistics.median(ratios):.2f} "
                     f"[{min(ratios):.2f}, {max(ratios):.2f}] | {min(loads):.0f}-{max(loads):.0f} |")  # fmt: skip
    lines += ["", "| model | context tokens | method | prefill s | scoring s | scoring / prefill | load average |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    seen: set[tuple] = set()
    for r in scoring:
        if (r["model"], r["context_tokens"], r["prefill_seconds"]) in seen:  # a resumed run wrote it again
            continue
        seen.add((r["model"], r["context_tokens"], r["prefill_seconds"]))
        lines.append(f"| {r['model']} | {r['context_tokens']} | {r['method']} | {r['prefill_seconds']:.1f} | "
                     f"{r['score_seconds']:.1f} | {r['score_seconds'] / r['prefill_seconds']:.2f} | "
                     f"{r['loadavg'][0]:.0f} |")  # fmt: skip
    return [*provenance(metas), "", *lines]


def openvino() -> list[str]:
    metas, rows = load("openvino_*_raw.jsonl")
    groups: dict[float, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["keep"]].append(r)
    lines = ["| keep (max_cache_size) | n | score [95% CI] | errors | seconds / answer |", "|---|---|---|---|---|"]
    for keep, g in sorted(groups.items(), reverse=True):
        s = []
        for r in g:
            q = r["q"]
            question = Question(q["text"], [Item(**it) for it in q["items"]], q["rule"], q["answer_prefix"],
                                q["max_new_tokens"])  # fmt: skip
            s.append(0.0 if r["error"] else score(r["answer"], question)[0])
        errors = sum(1 for r in g if r["error"])
        lines.append(f"| {keep} ({g[0].get('max_cache_size') or 'full'}) | {len(s)} | {ci(s)} | {errors} | "
                     f"{mean([r['seconds'] for r in g]):.1f} |")  # fmt: skip
    return [*provenance(metas), "", *lines]


def main() -> None:
    parts = {f"Validation: choosing the shared aggregate (KVzip scores, {m}, 2k)": validation(m) for m in MODELS}
    for model in MODELS:
        for tokens in (2000, 4000):
            parts[f"Retrieval inside llama.cpp, {model}, {tokens} tokens, question unseen"] = retrieval(model, tokens)
    parts["Validation: kvzip keeping the sliding window's last 512 positions (gemma3-270m, 4k, seed 1)"] = retrieval(
        "gemma3-270m", 4000, "choose_recent"
    )
    parts["Long documents through a small cache"] = longdoc()
    parts["Speed: decode from a 4x compressed cache vs the full cache; scoring vs prefill"] = speed()
    parts["OpenVINO GenAI's CacheEvictionConfig (same samples, same GGUF)"] = openvino()
    for title, lines in parts.items():
        if lines:
            print(f"### {title}\n")
            print("\n".join(lines))
            print()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
