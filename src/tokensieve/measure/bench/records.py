"""The JSON records a sweep writes: one per cell (every engine's cells share one shape) and one per sample."""

from __future__ import annotations

from typing import Any

from tokensieve.core.ops.memory import peak_rss
from tokensieve.kv import Compressed, Prefill
from tokensieve.measure.bench import cells as ev
from tokensieve.measure.bench.plan import Config
from tokensieve.measure.tasks import Sample, Task
from tokensieve.measure.tasks.base import score
from tokensieve.runtime.prompts import clean_answer


def cell_base(cfg: Config, sample: Sample, task: Task, length: int, setting: str, engine: str) -> dict[str, Any]:
    """The fields that name a cell (what ``plan.cell_key`` reads back), before its method and keep."""
    return {
        "type": "cell",
        "engine": engine,
        "model": cfg.model,
        "task": task.spec(),
        "kind": task.kind,
        "length": length,
        "sample": sample.index,
        "seed": cfg.seed,
        "setting": setting,
    }


def retrieval_fields(sample: Sample, answers: list[str]) -> dict[str, Any]:
    scores, items = [], []
    for q, a in zip(sample.questions, answers, strict=True):
        s, hits = score(a, q)
        scores.append(s)
        items.extend([it.depth, h] for it, h in zip(q.items, hits, strict=True))
    return {"score": sum(scores) / len(scores), "answers": answers, "items": items}


def tokensieve_cell(
    base: dict[str, Any],
    method: str,
    keep: float,
    out: dict[str, Any],
    c: Compressed,
    *,
    prefill_seconds: float,
    eval_seconds: float,
    compress_seconds: float | None = None,
    batch: int = 1,
    rss_peak: int | None = None,
    read: bool = False,
) -> dict[str, Any]:
    """One tokensieve cell: its name, its evaluation ``out``, the cache's measured stats and timings.
    ``rss_peak`` only where the cell ran alone (a batched cell shares its peak); ``read`` for the cells
    that may decode sparsely (what each decode step read); ``compress_seconds`` where the cell's compression is not
    its stats' (``block``: its whole block-wise prefill)."""
    s = c.stats
    rec = {
        **base,
        "method": method,
        "keep": keep,
        **out,
        "context_tokens": s.context_tokens,
        "kv_bytes": s.kv_bytes,
        "kv_bytes_full": s.kv_bytes_full,
        "kv_bytes_sliding": s.kv_bytes_sliding,
        "tokens_held": round(ev.mean_held(s), 2),
        "compress_seconds": round(s.compress_seconds if compress_seconds is None else compress_seconds, 5),
        "prefill_seconds": round(prefill_seconds, 4),
        "eval_seconds": round(eval_seconds, 4),
        "batch": batch,
    }
    if rss_peak is not None:
        rec["rss_peak"] = rss_peak
    if read and (stats := ev.read_stats(c)) is not None:
        rec["read"] = {k: round(v, 5) for k, v in stats.items()}
    return rec


def kvpress_cell(base: dict[str, Any], sample: Sample, res: dict[str, Any]) -> dict[str, Any]:
    """One kvpress cell from the bridge's result ``res`` (``base`` already names its method and keep)."""
    if sample.context_ids is not None:
        m = res["metrics"]
        fields = {"score": m["top1"], "metrics": {**m, "target_logprobs": res["target_logprobs"]}}
    else:
        fields = retrieval_fields(sample, [clean_answer(a) for a in res["answers"]])
    return {
        **base,
        **fields,
        "context_tokens": res["context_tokens"],
        "kv_bytes": res["kv_bytes"],
        "tokens_held": round(sum(res["tokens_held"]) / max(1, len(res["tokens_held"])), 2),
        "wall_seconds": round(res["seconds"], 4),
        "rss_peak": res.get("rss_peak"),
    }


def sample_record(
    cfg: Config, task: Task, length: int, sample: Sample, setting: str, cells: int, pre: Prefill, wall: float
) -> dict[str, Any]:
    """The closing record of one sample's tokensieve sweep: its prefill, wall time and peak RSS."""
    return {
        "type": "sample",
        "engine": cfg.engine,
        "task": task.spec(),
        "length": length,
        "sample": sample.index,
        "setting": setting,
        "cells": cells,
        "prefill_seconds": round(pre.seconds, 4),
        "wall_seconds": round(wall, 4),
        "observed_bytes": sum(o.nbytes for o in pre.observations.values()),
        "rss_peak": peak_rss(),
    }
