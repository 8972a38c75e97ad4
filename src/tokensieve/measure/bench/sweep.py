"""One sample's cells, per engine: every tokensieve cell from one prefill (``naive``: one per cell),
evaluated in stacks of equal shape; every kvpress cell through the bridge's subprocess."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from tokensieve.core.ops.memory import reset_peak_rss, track_peak_rss
from tokensieve.kv import Compressed, Prefill, compress, prefill
from tokensieve.measure.bench import cells as ev
from tokensieve.measure.bench.methods import MethodSpec
from tokensieve.measure.bench.metrics import SHORT_CONTEXT
from tokensieve.measure.bench.plan import AGNOSTIC, FULL, Config, Todo
from tokensieve.measure.bench.records import cell_base, kvpress_cell, retrieval_fields, sample_record, tokensieve_cell
from tokensieve.measure.tasks import Sample
from tokensieve.runtime.prompts import PromptFormat

# evaluate(cache, rows) -> (one record fragment per batch row, seconds spent)
Evaluate = Callable[[Compressed, int], tuple[list[dict[str, Any]], float]]


class Env:
    def __init__(self, cfg: Config) -> None:
        from tokensieve.runtime.models import load_model

        self.cfg = cfg
        self.model, self.tok = load_model(cfg.model)
        self.fmt = PromptFormat(self.tok)


def run_tokensieve(env: Env, todo: Todo, sample: Sample, setting: str, cells: list) -> Iterator[dict[str, Any]]:
    """Every tokensieve cell of one sample and setting, from one prefill (``naive``: one per cell)."""
    cfg, model, tok = env.cfg, env.model, env.tok
    shared = [m for m, _ in cells if m is not None and not m.sparse and not m.modifier and not m.own_prefill]
    methods = [] if cfg.naive else [m.method() for m in shared]
    reset_peak_rss()
    wall = time.perf_counter()
    context, last = _context(env, sample, setting)
    pre: Prefill = prefill(model, tok, context, methods=methods)
    base = cell_base(cfg, sample, todo.task, todo.length, setting, cfg.engine)
    full = pre.uncompressed()
    ref, ref_seconds = _fidelity_ref(pre, full, sample)
    evaluate = _evaluator(sample, setting, ref, last)
    if any(m is None for m, _ in cells):
        out, seconds = evaluate(full, 1)
        yield tokensieve_cell(
            base, FULL, 1.0, out[0], full, prefill_seconds=pre.seconds, eval_seconds=seconds + ref_seconds
        )
    for spec in (m for m, _ in cells if m is not None and m.modifier):  # their own prefill, keep 1.0
        with track_peak_rss() as rss:
            c = compress(model, tok, context, spec.method(), keep=1.0)
            out, seconds = evaluate(c, 1)
        yield tokensieve_cell(
            base,
            spec.label,
            1.0,
            out[0],
            c,
            prefill_seconds=c.stats.prefill_seconds,
            eval_seconds=seconds,
            rss_peak=rss.peak,
        )
    for keep in cfg.keeps:
        specs = [m for m, k in cells if m is not None and k == keep and not m.modifier and not m.own_prefill]
        own = [m for m, k in cells if m is not None and k == keep and m.own_prefill]
        yield from _naive_cells(env, context, own, keep, base, evaluate, pre.seconds)
        if cfg.naive:
            yield from _naive_cells(env, context, specs, keep, base, evaluate)
        else:
            yield from _shared_cells(pre, specs, keep, base, evaluate, cfg.max_batch)
    yield sample_record(cfg, todo.task, todo.length, sample, setting, len(cells), pre, time.perf_counter() - wall)


def _context(env: Env, sample: Sample, setting: str) -> tuple[str | torch.Tensor, int | None]:
    """What is prefilled, and (query-aware) the question's last token, fed after compression."""
    if sample.context_ids is not None:  # fidelity: plain token ids
        return torch.tensor([sample.context_ids]), None
    if setting == AGNOSTIC:
        return sample.context, None
    # query-aware: the question (all but its last token) is part of the compressed prompt
    q = sample.questions[0]
    ids = env.fmt.context_ids(sample.context) + env.fmt.question_ids(q.text, q.answer_prefix)
    return torch.tensor([ids[:-1]]), ids[-1]


def _fidelity_ref(pre: Prefill, full: Compressed, sample: Sample) -> tuple[ev.FidelityRef | None, float]:
    """The full cache's teacher-forced reference (fidelity samples), and the seconds it took: the full
    cell's evaluation pays for it."""
    if sample.context_ids is None:
        return None, 0.0
    first = int(pre.last_logits[0].argmax())
    t0 = time.perf_counter()
    lead = sample.context_ids[: sample.meta.get("lead", 0)]
    short = [*lead, *sample.context_ids[len(lead) :][-SHORT_CONTEXT:]]
    ref = ev.FidelityRef.build(full, sample.continuation, first, sample.meta["greedy"], short)
    return ref, time.perf_counter() - t0


def _evaluator(sample: Sample, setting: str, ref: ev.FidelityRef | None, last: int | None) -> Evaluate:
    def evaluate(c: Compressed, rows: int) -> tuple[list[dict[str, Any]], float]:
        if ref is not None:
            t = ev.fidelity_rows(c, ref)
            return [{"score": r["top1"], "metrics": r} for r in t.value], t.seconds
        per_row: list[list[str]] = [[] for _ in range(rows)]
        seconds = 0.0
        for q in sample.questions:
            t = ev.answer_rows(c, q, rows) if setting == AGNOSTIC else ev.answer_last_token(c, last, q, rows)
            seconds += t.seconds
            for r, a in enumerate(t.value):
                per_row[r].append(a)
        return [retrieval_fields(sample, a) for a in per_row], seconds

    return evaluate


def _naive_cells(
    env: Env,
    context: str | torch.Tensor,
    specs: list[MethodSpec],
    keep: float,
    base: dict[str, Any],
    evaluate: Evaluate,
    plain_seconds: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Each cell from its own prefill, evaluated alone, with its own peak RSS. A method that prefills the context its
    own way (``block``: block by block under the budget) is charged that whole prefill as compression, beside the
    sample's plain prefill (``plain_seconds``), so compress / prefill reads as its cost over a plain prefill."""
    model, tok = env.model, env.tok
    for spec in specs:
        with track_peak_rss() as rss:
            if spec.sparse:
                c = ev.sparse_cell(prefill(model, tok, context), spec.method(), keep)
            else:
                c = compress(
                    model, tok, context, spec.method(), keep=keep, allocator=spec.allocator, **spec.page_kwargs
                )
            out, seconds = evaluate(c, 1)
        own = spec.own_prefill and plain_seconds is not None
        yield tokensieve_cell(
            base,
            spec.label,
            keep,
            out[0],
            c,
            prefill_seconds=plain_seconds if own else c.stats.prefill_seconds,
            compress_seconds=c.stats.prefill_seconds + c.stats.compress_seconds if own else None,
            eval_seconds=seconds,
            rss_peak=rss.peak,
            read=True,
        )


def _shared_cells(
    pre: Prefill, specs: list[MethodSpec], keep: float, base: dict[str, Any], evaluate: Evaluate, max_batch: int
) -> Iterator[dict[str, Any]]:
    """Every cell compressed from the shared prefill, then evaluated in stacks of equal shape."""
    compressed = [
        ev.sparse_cell(pre, m.method(), keep)
        if m.sparse
        else pre.compress(m.method(), keep=keep, allocator=m.allocator, **m.page_kwargs)
        for m in specs
    ]
    for group in ev.groups(compressed, max_batch):
        batch = ev.stack([compressed[i] for i in group])
        out, seconds = evaluate(batch, len(group))
        for row, i in enumerate(group):
            yield tokensieve_cell(
                base,
                specs[i].label,
                keep,
                out[row],
                compressed[i],
                prefill_seconds=pre.seconds,
                eval_seconds=seconds / len(group),
                batch=len(group),
                read=True,
            )
        del batch
    del compressed


def run_kvpress(bridge, cfg: Config, todo: Todo, sample: Sample) -> Iterator[dict[str, Any]]:
    base = cell_base(cfg, sample, todo.task, todo.length, AGNOSTIC, "kvpress")
    for p, keep, res in bridge.run(sample, todo.kvpress):
        rec = {**base, "method": p.label if p else FULL, "keep": keep}
        yield {**rec, "error": res["error"]} if "error" in res else kvpress_cell(rec, sample, res)
