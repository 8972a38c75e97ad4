"""Pass-key retrieval at the same *byte* budget: head-adaptive vs uniform eviction, mixed precision vs pure
eviction, retrieval heads, merging; with the question unseen (cache reuse) and query-aware.

Every configuration holds (about) ``--bytes`` of the full cache's bytes, measured from the cache's storages
and written per row. Mixed-precision rows choose their high-precision fraction so that codes + scales + zero
points + full-precision tokens add up to the same bytes as eviction at keep = ``--bytes``.

    .venv/bin/python benchmarks/heads_passkey/heads_passkey.py --tokens 1500 --bytes 0.25 --configs core \
        --out benchmarks/heads_passkey/results/heads_passkey

One prefill per (depth, key) and setting serves every configuration (``prefill().compress()``); results are
appended per task to ``OUT.jsonl`` and a rerun skips the tasks already there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import tokensieve as ts
from tokensieve.core.ops.quant import bytes_per_token
from tokensieve.runtime.passkey import passkey_context

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import stamp, write_table

KEYS = ["31147", "40507", "88213", "12958", "73920", "56081"]


def hi_fraction(target: float, head_dim: int, hi_bits: int | None, lo_bits: int, group: int) -> float:
    """The high-precision fraction whose bytes equal ``target`` of the full cache (scales and zeros included)."""
    full = bytes_per_token(head_dim, None)
    hi, lo = bytes_per_token(head_dim, hi_bits, group) / full, bytes_per_token(head_dim, lo_bits, group) / full
    return (target - lo) / (hi - lo)


def configs(target: float, head_dim: int, which: str = "core") -> list[tuple[str, str, dict]]:
    """(label, method, parameters) at the same byte budget: ``core`` compares head-adaptive with uniform
    eviction and mixed precision with eviction; ``others`` the remaining methods of the issue."""
    mikv2 = hi_fraction(target, head_dim, None, 2, 32)
    mikv4 = hi_fraction(target, head_dim, None, 4, 32)
    zq = hi_fraction(target, head_dim, 8, 4, 0)
    if which == "core":
        return [
            ("snapkv uniform", "snapkv", dict(keep=target)),
            ("snapkv + adakv", "snapkv", dict(keep=target, allocator="adakv")),
            (f"mikv snapkv fp32 {mikv2:.3f} + INT2", "mikv", dict(keep=round(mikv2, 4), importance="snapkv")),
            (
                f"mikv snapkv fp32 {mikv4:.3f} + INT4",
                "mikv",
                dict(keep=round(mikv4, 4), importance="snapkv", lo_bits=4),
            ),
            (f"zipcache_quant INT8 {zq:.3f} + INT4", "zipcache_quant", dict(keep=round(zq, 4), hi_bits=8, lo_bits=4)),
        ]
    return [
        ("h2o uniform", "h2o", dict(keep=target)),
        ("h2o + adakv", "h2o", dict(keep=target, allocator="adakv")),
        ("snapkv + zipvl(0.95), at most target", "snapkv", dict(keep=target, allocator="zipvl")),
        ("ems evict+merge", "ems", dict(keep=target)),
        ("razor", "razor", dict(keep=target)),
        ("compresskv + its allocator", "compresskv", dict(keep=target, allocator="compresskv")),
        ("zipcache_quant 4/2 at keep=target (fewer bytes)", "zipcache_quant", dict(keep=target)),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", type=int, default=1500)
    p.add_argument("--bytes", type=float, default=0.25, help="target fraction of the full cache's bytes")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--keys", type=int, default=2, help="how many of the 6 keys per depth")
    p.add_argument("--settings", default="unseen,aware")
    p.add_argument("--configs", default="core", choices=["core", "others"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/heads_passkey/results/heads_passkey")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = ts.load_model(args.model)
    head_dim = model.config.head_dim
    table = configs(args.bytes, head_dim, args.configs)
    methods = sorted({m for _, m, _ in table})
    fmt = ts.PromptFormat(tok)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    done = set()
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            done.add((r["setting"], r["depth"], r["key"]))
    depths = [float(d) for d in args.depths.split(",")]
    settings = args.settings.split(",")
    with open(jsonl, "a") as f:
        for depth in depths:
            for key in KEYS[: args.keys]:
                task = passkey_context(tok, args.tokens, depth, key=key)
                question = fmt.question_ids(task.question, task.answer_prefix)
                for setting in settings:
                    if (setting, depth, key) in done:
                        continue
                    if setting == "unseen":
                        pre = ts.prefill(model, tok, task.context, methods=methods)
                    else:  # the question inside the compressed prompt; its last token starts generation
                        ids = fmt.context_ids(task.context) + question
                        pre = ts.prefill(model, tok, torch.tensor([ids[:-1]]), methods=methods)
                    row = {"setting": setting, "depth": depth, "key": key, "tokens": pre.context_tokens, "results": {}}

                    def ask(c, setting=setting, task=task, question=question):
                        if setting == "unseen":
                            return c.answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=8)
                        new = c.generate(torch.tensor([question[-1:]]), max_new_tokens=8)
                        return tok.decode(new[0], skip_special_tokens=True).strip()

                    full = pre.uncompressed()
                    a = ask(full)
                    row["results"]["full"] = {"ok": task.correct(a), "answer": a, "ratio": 1.0}
                    for label, method, params in table:
                        c = pre.compress(method, **params)
                        a = ask(c)
                        row["results"][label] = {"ok": task.correct(a), "answer": a[:40], "ratio": c.stats.ratio}
                    f.write(json.dumps(stamp(row)) + "\n")
                    f.flush()
                    oks = " ".join("1" if v["ok"] else "." for v in row["results"].values())
                    print(f"{setting:6} depth {depth:.1f} key {key}: {oks}", flush=True)
    summarize(jsonl, out.with_suffix(".md"), args)


def summarize(jsonl: Path, md: Path, args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    labels = list(rows[0]["results"])
    settings = [s for s in ("unseen", "aware") if any(r["setting"] == s for r in rows)]
    lines = [
        f"# Pass key at {args.tokens} tokens of prose, {args.model}: every configuration at {args.bytes:.0%} "
        "of the KV bytes",
        "",
        f"Command: `.venv/bin/python benchmarks/heads_passkey/heads_passkey.py --model {args.model} "
        f"--tokens {args.tokens} "
        f"--bytes {args.bytes} --depths {args.depths} --keys {args.keys} --configs {args.configs} --out {args.out}`",
        "",
        'Correct answers (greedy, 8 new tokens, the answer started with "The pass key is") out of depths x keys.',
        "`unseen`: the context is compressed alone and the question comes after (cache reuse); `query-aware`: the",
        "question is inside the compressed prompt. `bytes` is the measured mean of held / full KV bytes (storages:",
        "codes, fp16 scales and zero points, channel factors and merge weights included).",
        "",
        "| configuration | bytes | " + " | ".join(f"{s}" for s in settings) + " |",
        "|---|---:|" + "---:|" * len(settings),
    ]
    for label in labels:
        cells = []
        for s in settings:
            group = [r for r in rows if r["setting"] == s]
            cells.append(f"{sum(r['results'][label]['ok'] for r in group)}/{len(group)}")
        ratio = sum(r["results"][label]["ratio"] for r in rows) / len(rows)
        lines.append(f"| {label} | {ratio:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "By depth (unseen / query-aware), for a few rows:", ""]
    depths = sorted({r["depth"] for r in rows})
    pick = labels[:6]
    lines.append("| depth | " + " | ".join(pick) + " |")
    lines.append("|---:|" + "---:|" * len(pick))
    for d in depths:
        cells = []
        for lab in pick:
            per = []
            for s in settings:
                g = [r for r in rows if r["setting"] == s and r["depth"] == d]
                per.append(f"{sum(r['results'][lab]['ok'] for r in g)}/{len(g)}")
            cells.append(" / ".join(per))
        lines.append(f"| {d:.1f} | " + " | ".join(cells) + " |")
    write_table(md, lines)
    print(md.read_text())


if __name__ == "__main__":
    main()
