"""Per-press agreement between kvpress 0.5.5 and tokensieve's counterpart (issue 28 item 9).

For every press in ``PRESSES`` (``tokensieve.measure.bench.methods``: those with a counterpart; ``NOT_RUN`` lists the
others and why), on the same token ids:

- ``spearman``: the Spearman rank correlation of the per-token scores, per (layer, KV head), averaged (and its
  minimum), where kvpress's press exposes a score (its ScorerPress's ``score`` or KVzip's ``score_val``), over the
  slots neither side marks as always kept (``protected``);
- ``overlap``: the Jaccard overlap of the slots each (layer, KV head) keeps at ``--keep``, found in both caches by
  their values (keys where values were merged), less kvpress's head-wise masked slots;
- on a retrieval sample (``--model`` a real model): each side's greedy answer to the sample's question, whether they
  are the same and each one's score.

kvpress runs in its own environment (``.venv-kvpress``, ``scripts/setup_kvpress.sh``) through the bench's bridge.
The tokensieve side runs the press's ``matched`` spec (configured to compute the same thing) or, where there is
none, its ``nominal`` one. Outputs ``OUT.jsonl`` (one row per press and sample, with provenance) and ``OUT.md``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/unseen_kvpress/agreement.py --model smollm2 --length 256 \\
        --samples 2 --keep 0.5 --out benchmarks/unseen_kvpress/results/agreement
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py

from _common import command, write_results

import tokensieve as ts
from tokensieve.kv import finite, score_prefill
from tokensieve.measure.bench.kvpress_bridge import Bridge
from tokensieve.measure.bench.methods import PRESSES, MethodSpec, Press
from tokensieve.measure.tasks import get_task, score

# presses whose kvpress side cannot run question unseen on a bare context (FinchPress needs the delimiter its
# pipeline puts before a question)
SKIP = {
    "finch": "kvpress's FinchPress is query-aware: it needs its pipeline's question delimiter",
    "block": "tokensieve's block prefills the context block by block (no full prefill to score or to match kept "
    "slots against); kvpress's BlockPress scores a full prefill's keys",
}


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), 0-based."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() + 1) / 2)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two 1-D score vectors (the Pearson correlation of their average ranks); 1.0 when both
    are constant, 0.0 when only one is."""
    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    if den == 0.0:
        return 1.0 if float(ra.norm()) == float(rb.norm()) == 0.0 else 0.0
    return float((ra * rb).sum()) / den


def protected(s: torch.Tensor) -> torch.Tensor:
    """The slots a score marks as always kept (sinks, a recent window): those tied at its maximum, when more than
    one is. Each library marks them its own way (+inf here, the maximum or maximum + 1 in kvpress, or not in the
    score at all): the rank correlation is taken over the other slots."""
    top = s == s.max()
    return top if int(top.sum()) > 1 else torch.zeros_like(top)


def nearest(full: torch.Tensor, row: torch.Tensor) -> int | None:
    """The slot of ``full [T, D]`` equal to ``row`` to float rounding (eager and SDPA attention differ in the last
    bits from the second layer on), else None."""
    dist = (full.float() - row.float()).abs().amax(-1)
    j = int(dist.argmin())
    return j if float(dist[j]) <= 1e-4 * max(1.0, float(row.abs().max())) else None


def held_slots(full_k: torch.Tensor, full_v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> set[int]:
    """The context slots ``[T, D]`` whose value (else key) rows equal the held ``[n, D]`` rows."""
    out = set()
    for k, v in zip(keys, values, strict=True):
        j = nearest(full_v, v)
        j = nearest(full_k, k) if j is None else j
        if j is not None:
            out.add(j)
    return out


def tokensieve_kept(full: Any, compressed: Any, t: int) -> dict[int, list[set[int]]]:
    """Per full-attention layer and KV head of a compressed cache, the context slots (of ``t``) it holds (dense or
    ragged layers)."""
    base = {layer.layer_idx: layer for layer in full.cache.sieve_layers}
    out: dict[int, list[set[int]]] = {}
    for layer in compressed.cache.sieve_layers:
        ref = base[layer.layer_idx]
        fk, fv = ref.keys[0, :, :t], ref.values[0, :, :t]
        heads = []
        for h in range(fk.shape[0]):
            if hasattr(layer, "lengths"):  # ragged: one segment per (row, head) in flat storage
                lo, n = layer.starts[h], layer.lengths[h]
                k, v = layer.keys[lo : lo + n], layer.values[lo : lo + n]
            else:
                k, v = layer.keys[0, h], layer.values[0, h]
            heads.append(held_slots(fk[h], fv[h], k, v))
        out[layer.layer_idx] = heads
    return out


def compare(
    model: Any, tok: Any, bridge: Bridge, ids: list[int], presses: list[Press], keep: float
) -> list[dict[str, Any]]:
    """One row per press: score rank correlation and kept-set overlap on ``ids`` at ``keep``."""
    specs = {p.name: MethodSpec.parse(p.matched or p.nominal) for p in presses}
    pre = ts.prefill(model, tok, torch.tensor([ids]), methods=[s.method() for s in specs.values()])
    full = pre.uncompressed()
    theirs = {p.name: res for p, _, res in bridge.scores(ids, [(p, keep) for p in presses])}
    rows = []
    for p in presses:
        spec, res = specs[p.name], theirs[p.name]
        row: dict[str, Any] = {"press": p.cls, "spec": spec.label, "matched": p.matched is not None, "keep": keep}
        row["tokens"] = len(ids)
        if "error" in res:
            rows.append({**row, "error": "kvpress: " + res["error"]})
            continue
        start = time.perf_counter()
        try:
            method = spec.method()
            mine = score_prefill(pre, method) if res.get("scores") else {}
            c = pre.compress(method, keep=keep, allocator=spec.allocator, **spec.page_kwargs)
            kept = tokensieve_kept(full, c, len(ids))
        except Exception as e:  # report, keep going: one failing pair must not sink the run
            rows.append({**row, "error": f"tokensieve: {type(e).__name__}: {e}"})
            continue
        rhos = []
        for i, s in mine.items():
            their = res["scores"].get(str(i))
            if their is None:
                continue
            s = finite(s.float())[0]
            for h, th in enumerate(torch.tensor(their)):
                n = min(len(th), s.shape[-1])
                free = ~(protected(s[h, :n]) | protected(th[:n]))
                if int(free.sum()) >= 3:  # streaming's scores are all protection: nothing to rank
                    rhos.append(spearman(s[h, :n][free], th[:n][free]))
        jac, share_mine, share_theirs = [], [], []
        for i, heads in kept.items():
            their_heads = res["kept"].get(str(i))
            if their_heads is None:
                continue
            for h, mine_h in enumerate(heads):
                th = {j for j in their_heads[h] if 0 <= j < len(ids)}
                jac.append(len(mine_h & th) / max(1, len(mine_h | th)))
                share_mine.append(len(mine_h) / len(ids))
                share_theirs.append(len(th) / len(ids))
        if rhos:
            row["spearman"] = statistics.fmean(rhos)
            row["spearman_min"] = min(rhos)
        if jac:
            row["overlap"] = statistics.fmean(jac)
            row["kept_tokensieve"] = statistics.fmean(share_mine)
            row["kept_kvpress"] = statistics.fmean(share_theirs)
        row["seconds_tokensieve"] = time.perf_counter() - start
        rows.append(row)
    return rows


def answers(model: Any, tok: Any, bridge: Bridge, sample: Any, presses: list[Press], keep: float) -> dict:
    """Per press: (tokensieve's answer, kvpress's answer) to the sample's first question, and each one's score."""
    q = sample.questions[0]
    specs = {p.name: MethodSpec.parse(p.matched or p.nominal) for p in presses}
    pre = ts.prefill(model, tok, sample.context, methods=[s.method() for s in specs.values()])
    one = dataclasses.replace(sample, questions=[q])
    theirs = {p.name: res for p, _, res in bridge.run(one, [(p, keep) for p in presses])}
    out = {}
    for p in presses:
        res = theirs[p.name]
        try:
            c = pre.compress(specs[p.name].method(), keep=keep, allocator=specs[p.name].allocator)
            mine = c.answer(q.text, max_new_tokens=q.max_new_tokens, answer_prefix=q.answer_prefix)
        except Exception as e:
            mine = f"error: {type(e).__name__}: {e}"
        their = res["answers"][0] if "answers" in res else f"error: {res.get('error')}"
        out[p.name] = {
            "answer_tokensieve": mine,
            "answer_kvpress": their,
            "same_answer": mine.strip() == their.strip(),
            "score_tokensieve": score(mine, q)[0],
            "score_kvpress": score(their, q)[0],
        }
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per press: means over samples."""
    lines = [
        "| kvpress press | tokensieve spec | matched | Spearman (mean / min) | kept-set overlap "
        "| kept share ts / kvpress | same answers | score ts / kvpress |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["press"], []).append(r)

    def mean(rs: list[dict], k: str) -> float | None:
        xs = [r[k] for r in rs if r.get(k) is not None]
        return statistics.fmean(xs) if xs else None

    for press, rs in by.items():
        err = next((r["error"] for r in rs if "error" in r), None)
        sp, sp_min = mean(rs, "spearman"), min((r["spearman_min"] for r in rs if "spearman_min" in r), default=None)
        ov, km, kt = mean(rs, "overlap"), mean(rs, "kept_tokensieve"), mean(rs, "kept_kvpress")
        same = [r["same_answer"] for r in rs if "same_answer" in r]
        sm, st = mean(rs, "score_tokensieve"), mean(rs, "score_kvpress")
        cells = [
            f"`{press}`",
            f"`{rs[0]['spec']}`",
            "yes" if rs[0]["matched"] else "nominal",
            "—" if sp is None else f"{sp:.3f} / {sp_min:.3f}",
            "—" if ov is None else f"{ov:.3f}",
            "—" if km is None else f"{km:.3f} / {kt:.3f}",
            "—" if not same else f"{sum(same)}/{len(same)}",
            "—" if sm is None else f"{sm:.2f} / {st:.2f}",
        ]
        if err is not None:
            cells[3] = f"error: {err[:90]}"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--task", default="niah_single:haystack=prose")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="first sample index")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--presses", default="all", help="comma-separated PRESSES names (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--answers", type=int, default=1, help="1: also compare each side's answer (a generation each)")
    ap.add_argument("--out", default="benchmarks/unseen_kvpress/results/agreement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = list(PRESSES) if args.presses == "all" else args.presses.split(",")
    presses = [PRESSES[n] for n in names if n not in SKIP]
    model, tok = ts.load_model(args.model)
    fmt = ts.PromptFormat(tok)
    task = get_task(args.task)
    bridge = Bridge(args.model, args.threads)
    rows: list[dict[str, Any]] = []
    skipped = [f"- `{PRESSES[n].cls}`: {why}" for n, why in SKIP.items() if n in names]
    cmd = command("unseen_kvpress/agreement.py", args, env="OMP_NUM_THREADS=1")
    try:
        for i in range(args.seed, args.seed + args.samples):
            sample = task.sample(tok, args.length, i)
            ids = fmt.context_ids(sample.context)
            start = time.perf_counter()
            got = compare(model, tok, bridge, ids, presses, args.keep)
            print(f"sample {i}: scores and kept sets in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            said = answers(model, tok, bridge, sample, presses, args.keep) if args.answers else {}
            print(f"sample {i}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            for p, r in zip(presses, got, strict=True):
                rows.append({**r, "sample": i, "task": args.task, **said.get(p.name, {}), "model": args.model})
            head = [
                f"# kvpress {bridge.versions.get('kvpress')} against tokensieve: per-press agreement",
                "",
                f"{args.model}, `{args.task}`, {i - args.seed + 1} sample(s) of about {args.length} tokens, keep "
                f"{args.keep}; Spearman over (layer, KV head) of the per-token scores (unprotected slots), kept-set "
                "Jaccard per (layer, KV head), answers to each sample's question. Not run here:",
                *skipped,
                "",
            ]
            write_results(Path(args.out), rows, [*head, *table(rows)], cmd)  # after every sample: a cut run keeps it
    finally:
        bridge.close()


if __name__ == "__main__":
    main()
