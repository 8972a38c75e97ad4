"""tokensieve bench: task generators, scoring rules, prefill reuse, stacking, resume, report, kvpress agreement.

Everything here runs on tiny random models and a byte-level tokenizer built in the test (one token per
byte, so lengths and depths are easy to check); the real tokenizer's lengths are checked in test_real-style
tests marked ``real`` at the end.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import tokensieve as ts
from conftest import CI, COMMON, make_model
from tokensieve.cli import main
from tokensieve.kv import get_sparse
from tokensieve.measure.bench import cells as ev
from tokensieve.measure.bench.kvpress_bridge import Bridge
from tokensieve.measure.bench.methods import PRESSES, MethodSpec, default_methods
from tokensieve.measure.bench.records import retrieval_fields
from tokensieve.measure.bench.report import Results, aggregate, write_summary
from tokensieve.measure.bench.runner import Config, load_done, run
from tokensieve.measure.tasks import GROUPS, Item, Question, expand_tasks, get_task, score
from tokensieve.measure.tasks.ruler import spread_depth

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 258  # 256 bytes + eos + pad


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**COMMON, "vocab_size": VOCAB, "max_position_embeddings": 4096}))
    model.generation_config.eos_token_id = 256
    model.generation_config.pad_token_id = 257
    return model.eval()


# --- scoring rules ------------------------------------------------------------------------------


def test_scoring_rules():
    one = Question("q", [Item("4821937")], "contains")
    assert score("The number is 4821937.", one)[0] == 1.0
    assert score("48219370", one)[0] == 0.0  # whole tokens only: a longer number is wrong
    assert score("It is 4821936", one)[0] == 0.0
    many = Question("q", [Item("Raven"), Item("owl"), Item("fox"), Item("e32a-77")], "recall")
    s, hits = score("raven, OWL and e32a-77!", many)
    assert s == 0.75 and hits == [True, True, False, True]
    exact = Question("q", [Item("Blue sky")], "exact")
    assert score(" blue sky. ", exact)[0] == 1.0 and score("the blue sky", exact)[0] == 0.0
    with pytest.raises(ValueError, match="unknown scoring rule"):
        score("x", Question("q", [Item("x")], "fuzzy"))


def test_fidelity_metrics_on_small_tensors():
    from tokensieve.measure.bench import metrics

    torch.manual_seed(0)
    ref_logits = torch.randn(6, 11)
    targets = torch.tensor([1, 4, 2, 2, 9, 0])
    ref = metrics.reference(ref_logits)
    greedy_targets = ref_logits.argmax(-1)
    same = metrics.fidelity(ref_logits, targets, ref, ref_logits, greedy_targets)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1"] == 1.0 and same["greedy"] == 1.0
    assert same["nll"] == pytest.approx(float(-ref[torch.arange(6), targets].mean()))
    cell = ref_logits.clone()
    cell[3] = -cell[3]  # position 3 now predicts something else
    m = metrics.fidelity(cell, targets, ref, cell, greedy_targets)
    assert m["greedy"] == 3 / 6 and m["top1"] == pytest.approx(5 / 6) and m["kl"] > 0
    p, q = ref[3].exp(), torch.log_softmax(cell[3], -1)
    assert m["kl"] == pytest.approx(float((p * (ref[3] - q)).sum()) / 6, rel=1e-5)
    short = ref.clone()
    short[1, 4] -= 3.0  # only target 1 (token 4) is much likelier with the long context
    long = metrics.long_positions(ref, short, targets)
    assert long.tolist() == [False, True, False, False, False, False]
    m = metrics.fidelity(cell, targets, ref, cell, greedy_targets, long)
    assert m["n_long"] == 1 and m["kl_long"] == pytest.approx(0.0, abs=1e-6)
    assert metrics.fidelity(cell, targets, ref, cell, greedy_targets, long & False)["kl_long"] is None


# --- generators: lengths, placement, determinism --------------------------------------------------


@pytest.mark.parametrize("spec", GROUPS["all"])
def test_every_task_fits_its_length_and_is_deterministic(byte_tok, spec):
    task = get_task(spec)
    fmt = ts.PromptFormat(byte_tok)
    n = 1500
    s = task.sample(byte_tok, n, 3)
    again = task.sample(byte_tok, n, 3)
    other = task.sample(byte_tok, n, 4)
    assert s.to_dict() == again.to_dict() and s.to_dict() != other.to_dict()
    if s.context_ids is not None:  # fidelity: exact length, true continuation
        assert len(s.context_ids) == n and len(s.continuation) == task.continuation + 1
        return
    got = len(fmt.context_ids(s.context))
    slack = 250 if "prose" in spec else 40  # within one sentence of the target (one byte per token here)
    assert n - slack <= got <= n, (spec, got)
    for q in s.questions:
        for it in q.items:
            assert it.text in s.context, it  # every expected item is in the context


@pytest.mark.parametrize("index", range(6))
def test_needle_sits_at_its_depth(byte_tok, index):
    s = get_task("niah_single").sample(byte_tok, 2000, index)
    ids = ts.PromptFormat(byte_tok).context_ids(s.context)
    item = s.questions[0].items[0]
    needle = "One of the special magic numbers for"
    pos = s.context.index(needle)  # one byte per token: the character offset is the token offset
    assert s.context.count(item.text) == 1
    assert abs(pos / len(ids) - item.depth) < 0.01
    assert abs(item.depth - spread_depth(index)) < 0.03  # the requested depth, within a filler sentence


def test_multi_needle_tasks(byte_tok):
    mk = get_task("niah_multikey").sample(byte_tok, 2000, 0)
    assert mk.context.count("One of the special magic numbers for") == 4  # the target + 3 distractors
    mv = get_task("niah_multivalue").sample(byte_tok, 2000, 0)
    key = mv.questions[0].text.split(" for ")[1].split(" mentioned")[0]
    assert mv.context.count(f"numbers for {key} is:") == 4 and len(mv.questions[0].items) == 4
    mq = get_task("niah_multiquery:value=word").sample(byte_tok, 2000, 0)
    assert len({it.text for it in mq.questions[0].items}) == 4 and mq.questions[0].rule == "recall"
    for s in (mk, mv, mq):
        depths = [it.depth for it in s.questions[0].items]
        assert all(0.0 <= d <= 1.0 for d in depths)


def test_multi_ask_asks_one_question_per_needle_of_one_context(byte_tok):
    s = get_task("niah_multiask:asks=3").sample(byte_tok, 2000, 0)
    assert len(s.questions) == 3 and all(q.rule == "contains" and len(q.items) == 1 for q in s.questions)
    keys = [q.text.split(" for ")[1].split(" mentioned")[0] for q in s.questions]
    assert len(set(keys)) == 3
    for key, q in zip(keys, s.questions, strict=True):  # each question's value is its own key's needle
        assert f"numbers for {key} is: {q.items[0].text}." in s.context
    answers = [q.items[0].text for q in s.questions[:2]] + ["no idea"]
    assert retrieval_fields(s, answers)["score"] == pytest.approx(2 / 3)  # the mean over the questions


def test_variable_tracking_chain_in_order(byte_tok):
    s = get_task("vt").sample(byte_tok, 2000, 1)
    names = [it.text for it in s.questions[0].items]
    value = s.questions[0].text.split("value ")[1].split(" ")[0]
    pos = [s.context.index(f"VAR {names[0]} = {value}.")]
    pos += [s.context.index(f"VAR {b} = {a}.") for a, b in itertools.pairwise(names)]
    assert pos == sorted(pos) and len(set(names)) == len(names)


def test_common_and_frequent_words_have_unambiguous_answers(byte_tok):
    for n in (1000, 4000):  # a long list needs the other words to repeat more: still strictly fewer
        s = get_task("cwe").sample(byte_tok, n, 0)
        words = [line.split(". ", 1)[1] for line in s.context.splitlines()[1:]]
        counts = Counter(words)
        common = {it.text for it in s.questions[0].items}
        assert min(counts[w] for w in common) > max(c for w, c in counts.items() if w not in common)
    s = get_task("fwe").sample(byte_tok, 2000, 2)
    counts = Counter(s.context.splitlines()[1].split())
    top = {it.text for it in s.questions[0].items}
    assert min(counts[w] for w in top) > max(c for w, c in counts.items() if w not in top)


def test_fidelity_samples_read_disjoint_text(byte_tok):
    task = get_task("fidelity")
    spans = []
    for i in range(6):
        s = task.sample(byte_tok, 1000, i)
        spans.append((s.meta["start"], s.meta["start"] + 1000 + task.continuation + 1))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_task_specs_and_errors():
    assert [t.spec() for t in expand_tasks("fidelity,niah_single:haystack=prose:value=uuid")] == [
        "fidelity",
        "niah_single:haystack=prose:value=uuid",
    ]
    with pytest.raises(ValueError, match="unknown task"):
        get_task("niah_double")
    with pytest.raises(ValueError, match="takes"):
        get_task("niah_single:depth=3")


# --- prefill once, compress many ------------------------------------------------------------------

# a streaming head keeps sinks + recent tokens, which must fit these 150-token contexts
TINY = {"duo_attention": "duo_attention:sinks=2:recent=8"}
SPECS = [
    *(TINY.get(m.label, m.label) for m in default_methods()),
    # the scorers' matched configurations; the wrappers' (over kvpress's SnapKV) share default_methods' code paths
    *(p.matched for p in PRESSES.values() if p.matched and "press" not in p.params and p.matched != "kvgrad:chunk=512"),
    "h2o@pyramid",
]


@pytest.mark.parametrize("arch,keeps", [("llama", (0.5, 0.1)), ("gemma3", (0.3,))])
def test_cell_from_shared_prefill_equals_cell_from_its_own_prefill(arch, keeps):
    model = ts.prepare(make_model(arch))
    ctx = torch.randint(3, 128, (1, 150), generator=torch.Generator().manual_seed(0))
    specs = [MethodSpec.parse(s) for s in SPECS]
    shared = ts.prefill(model, None, ctx, methods=[s.method() for s in specs])
    cont = torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(1))
    for spec in specs:
        for keep in keeps:
            a = shared.compress(spec.method(), keep=keep, allocator=spec.allocator)
            b = ts.compress(model, None, ctx, spec.method(), keep=keep, allocator=spec.allocator)
            for la, lb in zip(a.cache.sieve_layers, b.cache.sieve_layers, strict=True):
                ia = la.token_index if la.token_index is not None else getattr(la, "flat_index", None)  # ragged
                ib = lb.token_index if lb.token_index is not None else getattr(lb, "flat_index", None)
                assert (ia is None and ib is None) or torch.equal(ia, ib), (spec.label, keep)
                assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
            assert torch.equal(ev.forward_logits(a, cont), ev.forward_logits(b, cont)), spec.label


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_stacked_cells_equal_cells_alone(arch):
    model = ts.prepare(tiny_llama() if arch == "llama" else make_model("gemma3"))
    ctx = torch.randint(3, 120, (1, 120), generator=torch.Generator().manual_seed(2))
    specs = [MethodSpec.parse(s) for s in ("snapkv", "h2o", "knorm", "streaming", "tova")]
    pre = ts.prefill(model, None, ctx, methods=[s.method() for s in specs])
    cells = [pre.compress(s.method(), keep=0.3) for s in specs]
    assert ev.groups(cells, 8) == [[0, 1, 2, 3, 4]] and ev.groups(cells, 2) == [[0, 1], [2, 3], [4]]
    stacked = ev.stack(cells)
    cont = torch.randint(3, 120, (10,), generator=torch.Generator().manual_seed(3))
    together = ev.forward_logits(stacked, cont)
    for r, c in enumerate(cells):
        torch.testing.assert_close(together[r : r + 1], ev.forward_logits(c, cont), atol=1e-5, rtol=1e-5)
    q = torch.randint(3, 120, (1, 5), generator=torch.Generator().manual_seed(4))
    rows = stacked.generate(q.expand(len(cells), -1), max_new_tokens=6, min_new_tokens=6)
    for r, c in enumerate(cells):
        assert torch.equal(rows[r], c.generate(q, max_new_tokens=6, min_new_tokens=6)[0])
    # a pyramid cell has other per-layer sizes: it is evaluated in its own group
    mixed = [*cells, pre.compress("snapkv", keep=0.3, allocator="pyramid")]
    assert [len(g) for g in ev.groups(mixed, 8)] == [5, 1]


def test_ragged_cells_stack_across_keeps_and_equal_cells_alone():
    from tokensieve.kv import RaggedLayer

    model = ts.prepare(tiny_llama())
    ctx = torch.randint(3, 120, (1, 120), generator=torch.Generator().manual_seed(5))
    pre = ts.prefill(model, None, ctx, methods=["kvzip", "snapkv"])
    cells = [pre.compress(m, keep=k) for m in ("kvzip", "kvzip+") for k in (0.5, 0.25)]
    cells += [pre.compress("snapkv", keep=0.25, allocator="adakv")]
    ragged = [i for i, c in enumerate(cells) if all(isinstance(x, RaggedLayer) for x in c.cache.sieve_layers)]
    assert len(ragged) >= 3  # head-adaptive budgets: ragged in every layer, at any keep
    group = next(g for g in ev.groups(cells, 8) if len(g) > 1)
    stacked = ev.stack([cells[i] for i in group])
    q = torch.randint(3, 120, (1, 5), generator=torch.Generator().manual_seed(6))
    rows = stacked.generate(q.expand(len(group), -1), max_new_tokens=6, min_new_tokens=6)
    for r, i in enumerate(group):
        assert torch.equal(rows[r], cells[i].generate(q, max_new_tokens=6, min_new_tokens=6)[0])


# --- the runner: one JSON line per cell, resume, report -------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, byte_tok) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    byte_tok.save_pretrained(path)
    return path


def _config(tiny_dir: Path, out: Path, samples: int = 2, **kw) -> Config:
    return Config(
        tasks=expand_tasks("fidelity,niah_single"),
        lengths=[300],
        methods=[MethodSpec.parse(s) for s in ("snapkv", "knorm", "h2o@pyramid")],
        keeps=[0.5, 0.25],
        samples=samples,
        out=out,
        model=str(tiny_dir),
        threads=None,
        **kw,
    )


def _cells(path: Path) -> list[dict]:
    return [
        json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith('{"type": "cell"') and ln[-1] == "}"
    ]


def test_runner_writes_one_line_per_cell_and_resumes(tiny_dir, tmp_path):
    cfg = _config(tiny_dir, tmp_path / "run")
    path = run(cfg)
    cells = _cells(path)
    assert len(cells) == 2 * 2 * (1 + 3 * 2)  # tasks x samples x (full + methods x keeps)
    for c in cells:
        assert {"score", "kv_bytes", "kv_bytes_full", "tokens_held", "prefill_seconds", "eval_seconds"} <= set(c)
        assert 0.0 <= c["score"] <= 1.0
        if c["method"] != "full":
            assert c["kv_bytes"] < c["kv_bytes_full"]
    fid = {(c["method"], c["keep"], c["sample"]): c for c in cells if c["kind"] == "fidelity"}
    assert fid[("full", 1.0, 0)]["metrics"]["kl"] == 0.0 and fid[("full", 1.0, 0)]["metrics"]["top1"] == 1.0
    assert fid[("knorm", 0.25, 0)]["metrics"]["kl"] > 0.0

    run(cfg)  # everything is done: nothing is added
    assert len(_cells(path)) == len(cells)

    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if '"method": "knorm"' not in ln or '"sample": 1' not in ln]
    path.write_text("\n".join(kept) + "\n" + '{"type": "cell", "engine": "tok')  # and a line cut mid-write
    assert len(load_done(path)) == len(cells) - 4  # knorm x 2 keeps x 2 tasks of sample 1
    run(cfg)
    redone = [c for c in _cells(path) if c["method"] == "knorm" and c["sample"] == 1]
    assert len(redone) == 4 and len(load_done(path)) == len(cells)
    before = {(c["task"], c["keep"]): c["score"] for c in cells if c["method"] == "knorm" and c["sample"] == 1}
    for c in redone:  # the same cell computed again (in a smaller batch) scores the same
        assert c["score"] == pytest.approx(before[(c["task"], c["keep"])], abs=1e-6)


def test_runner_cell_equals_its_own_prefill(tiny_dir, tmp_path):
    """The sweep's fidelity metrics for one cell equal those computed with a prefill of its own."""
    cfg = _config(tiny_dir, tmp_path / "run", samples=1)
    cfg.tasks = expand_tasks("fidelity")
    path = run(cfg)
    rec = next(c for c in _cells(path) if c["method"] == "snapkv" and c["keep"] == 0.25)
    model, tok = ts.load_model(str(tiny_dir))
    sample = cfg.tasks[0].sample(tok, 300, 0)
    ctx = torch.tensor([sample.context_ids])
    full = ts.prefill(model, tok, ctx)
    ref = ev.FidelityRef.build(full.uncompressed(), sample.continuation, int(full.last_logits[0].argmax()), 32)
    own = ev.fidelity_rows(ts.compress(model, tok, ctx, "snapkv", keep=0.25), ref).value[0]
    for k in ("nll", "kl", "top1", "greedy"):
        assert rec["metrics"][k] == pytest.approx(own[k], abs=1e-5), k


def test_sparse_decoding_cells_from_the_shared_prefill(tiny_dir, tmp_path):
    """Sparse decoders ride the same prefill: keep is the read fraction, the cache is held whole, the
    measured read is below 1, the cell equals one run from its own prefill (step by step, one token per
    forward), and reading everything equals the full cache."""
    cfg = _config(tiny_dir, tmp_path / "run", samples=1)
    cfg.tasks = expand_tasks("fidelity")
    cfg.methods = [MethodSpec.parse(s) for s in ("quest", "hisa")]
    cfg.keeps = [0.25]
    cells = _cells(run(cfg))
    full = next(c for c in cells if c["method"] == "full")
    for c in (c for c in cells if c["method"] != "full"):
        assert c["kv_bytes"] == full["kv_bytes"] and c["keep"] == 0.25
        assert 0.25 <= c["read"]["read_fraction"] < 0.6 and c["read"]["sparse_steps"] > 0
        assert c["read"]["attended_fraction"] == pytest.approx(0.25, abs=0.02)
    rec = next(c for c in cells if c["method"] == "quest")
    model, tok = ts.load_model(str(tiny_dir))
    sample = cfg.tasks[0].sample(tok, 300, 0)
    pre = ts.prefill(model, tok, torch.tensor([sample.context_ids]))
    ref = ev.FidelityRef.build(pre.uncompressed(), sample.continuation, int(pre.last_logits[0].argmax()), 32)
    own = ev.fidelity_rows(ev.sparse_cell(pre, get_sparse("quest"), 0.25), ref).value[0]
    for k in ("nll", "kl", "top1", "greedy"):
        assert rec["metrics"][k] == pytest.approx(own[k], abs=1e-5), k
    everything = ev.fidelity_rows(ev.sparse_cell(pre, get_sparse("quest"), 1.0), ref).value[0]
    assert everything["top1"] == 1.0 and everything["kl"] < 1e-6
    with pytest.raises(ts.UnknownMethodError, match="no allocator"):
        MethodSpec.parse("quest@pyramid")
    summary = write_summary(tmp_path / "run").read_text()
    assert "## Sparse decoding: what each decode step read" in summary and "| quest | 0.25 |" in summary


def test_attention_modifiers_run_once_per_sample_from_their_own_prefill(tiny_dir, tmp_path):
    cfg = _config(tiny_dir, tmp_path / "run", samples=1)
    cfg.tasks = expand_tasks("fidelity")
    cfg.methods = [MethodSpec.parse(s) for s in ("zerotuning:gamma=0.5", "snapkv")]
    cells = _cells(run(cfg))
    mod = [c for c in cells if c["method"].startswith("zerotuning")]
    assert [c["keep"] for c in mod] == [1.0] and mod[0]["kv_bytes"] == mod[0]["kv_bytes_full"]
    assert sorted(c["keep"] for c in cells if c["method"] == "snapkv") == [0.25, 0.5]
    model, tok = ts.load_model(str(tiny_dir))
    sample = cfg.tasks[0].sample(tok, 300, 0)
    ctx = torch.tensor([sample.context_ids])
    pre = ts.prefill(model, tok, ctx)
    ref = ev.FidelityRef.build(pre.uncompressed(), sample.continuation, int(pre.last_logits[0].argmax()), 32)
    own = ev.fidelity_rows(ts.compress(model, tok, ctx, "zerotuning", keep=1.0, gamma=0.5), ref).value[0]
    assert mod[0]["metrics"]["kl"] == pytest.approx(own["kl"], abs=1e-6) and own["kl"] > 0
    assert "(all tokens)" in write_summary(tmp_path / "run").read_text()


def test_report_and_plots(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run(_config(tiny_dir, out, samples=1))
    summary = write_summary(out).read_text()
    assert "**full cache**" in summary and "| keep 0.5 | keep 0.25 |" in summary
    assert "snapkv" in summary and "h2o@pyramid" in summary and "KV MiB" in summary
    from tokensieve.measure.bench.plots import write_plots

    names = {p.name for p in write_plots(out)}
    assert {"score_vs_keep.png", "needle_depth.png"} <= names
    assert all((out / n).stat().st_size > 10_000 for n in names)
    res = Results.load(out / "results.jsonl")
    assert {c["method"] for c in res.cells} == {"full", "snapkv", "knorm", "h2o@pyramid"}


def test_score_vs_keep_draws_only_panels_with_data():
    """A retrieval-only run draws no empty fidelity panels, and a fidelity-only run no retrieval panel (issue 26:
    the kvpress comparison's figure had four empty panels); committed bench folders, no model."""
    from tokensieve.measure.bench.plots import panels_shown

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    retrieval = aggregate(Results.load(root / "unseen_kvpress/results/results.jsonl"))
    fidelity = aggregate(Results.load(root / "kv_pages/results/results.jsonl"))
    assert panels_shown(retrieval) == ["retrieval %"]
    assert "retrieval %" not in panels_shown(fidelity) and "fidelity top-1 %" in panels_shown(fidelity)


def test_summary_prints_only_sections_with_data(tmp_path):
    """A retrieval-only run's summary has no empty fidelity tables and its headline holds the retrieval scores;
    a fidelity-only run has no retrieval table (committed bench folders, no model)."""
    import shutil

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    for name, src in (("r", "block_prefill/results/quality_2048"), ("f", "kv_pages/results")):
        (tmp_path / name).mkdir()
        shutil.copy(root / src / "results.jsonl", tmp_path / name / "results.jsonl")
    retrieval = write_summary(tmp_path / "r").read_text()
    assert "fidelity, top-1" not in retrieval and "fidelity top-1 %" not in retrieval
    head = retrieval.split("## Headline")[1].split("## 2048")[0]
    assert "| tokens | method | retrieval % (keep 0.5 / 0.25 / 0.1) |" in head
    assert "| 2048 | keydiff | 38 / 17 / 10 |" in head  # 23, 10 and 6 right of 60
    fidelity = write_summary(tmp_path / "f").read_text()
    assert "retrieval tasks, mean score" not in fidelity and "fidelity, top-1" in fidelity
    assert "retrieval %" not in fidelity.split("## Headline")[1].split("\n\n## ")[0]


def test_cli_bench_rejects_bad_input_in_one_line(capsys, tmp_path):
    for argv, msg in (
        (["--keep", "0.5,1.5"], "outside (0, 1]"),
        (["--keep", "1.0"], "full cache"),
        (["--tasks", "niah_double"], "unknown task"),
        (["--methods", "snapkv,nope"], "unknown method id"),
        (["--methods", "snapkv@wedge"], "unknown budget allocator"),
        (["--compare", "vllm"], "only comparison"),
    ):
        rc = main(["bench", "--out", str(tmp_path / "x"), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1, (argv, err)
    assert main(["bench", "--out", str(tmp_path / "missing"), "--report-only"]) == 2


# --- kvpress: matched definitions give the same cells (needs .venv-kvpress; skipped outside CI) ----


def kvpress_or_skip() -> str:
    """kvpress's interpreter; outside CI a missing .venv-kvpress skips, in CI (``$CI`` set) it fails: CI builds it."""
    from tokensieve.measure.bench.kvpress_bridge import available

    python = available()
    if python is None:
        if CI:
            pytest.fail("CI is set but .venv-kvpress (scripts/setup_kvpress.sh) is missing: the kvpress tests must run")
        pytest.skip("kvpress environment not installed (scripts/setup_kvpress.sh)")
    return python


# the pairs whose scores are the same definition (rank correlation over unprotected slots, on a tiny random model
# whose near-uniform attention makes attention scores the hardest case), and those whose kept sets agree at keep 0.5;
# the other pairs differ by a stated rule (docs/kv-breadth.md, "kvpress agreement")
SAME_SCORES = {
    **dict.fromkeys(("knorm", "observed_attention", "cur", "expected_attention", "leverage", "cap"), 0.999),
    **dict.fromkeys(("snapkv", "tova", "keydiff", "non_causal_attn", "compactor", "kvgrad", "chunk"), 0.9),
}
SAME_KEPT = (
    "streaming", "knorm", "snapkv", "tova", "observed_attention", "expected_attention", "lagkv", "leverage",
    "non_causal_attn", "cur", "cap", "kvcompose", "adakv", "chunk", "rerotate", "merging",
)  # fmt: skip
OUTPUT_SHARE = ("simlayerkv",)  # the share kept is an output of the rule, not the keep asked for


def test_kvpress_per_press_agreement_on_a_tiny_model(tiny_dir):
    """benchmarks/unseen_kvpress/agreement.py's comparison on a tiny random model (200 distinct tokens, keep 0.5):
    every press with a counterpart runs on both sides, and the matched definitions agree."""
    kvpress_or_skip()
    spec = importlib.util.spec_from_file_location("agreement", ROOT / "benchmarks/unseen_kvpress/agreement.py")
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    model, tok = ts.load_model(str(tiny_dir))
    ids = (torch.randperm(250, generator=torch.Generator().manual_seed(5)) + 3)[:200].tolist()
    presses = [p for n, p in PRESSES.items() if n not in agreement.SKIP]
    bridge = Bridge(str(tiny_dir), None)
    try:
        rows = {r["press"]: r for r in agreement.compare(model, tok, bridge, ids, presses, 0.5)}
    finally:
        bridge.close()
    print("\n".join(agreement.table(list(rows.values()))))
    assert not [r for r in rows.values() if "error" in r], "every press with a counterpart runs on both sides"
    for name, floor in SAME_SCORES.items():
        r = rows[PRESSES[name].cls]
        assert r.get("spearman", 0) >= floor, (name, r)
    for name in SAME_KEPT:
        r = rows[PRESSES[name].cls]
        assert r.get("overlap", 0) >= 0.95 and r["kept_kvpress"] == pytest.approx(r["kept_tokensieve"], abs=0.01), r
    # every other pair keeps the same share too (a stale head-wise mask once halved KVComposePress's)
    for name, p in PRESSES.items():
        r = rows.get(p.cls, {})
        if name not in OUTPUT_SHARE and "overlap" in r:
            assert r["kept_kvpress"] == pytest.approx(r["kept_tokensieve"], abs=0.01), (name, r)


def _chunkkv_kept(s: torch.Tensor, size: int, share: float) -> set[int]:
    """kvpress's ChunkKV rule on one score row ``[T]``: the ``int(chunks x share)`` chunks of ``size`` with the
    highest mean, kept whole (the last, shorter chunk ranked by its own mean)."""
    t = len(s)
    chunks = [list(range(lo, min(t, lo + size))) for lo in range(0, t, size)]
    means = torch.stack([s[c].mean() for c in chunks])
    best = means.topk(max(1, int(len(chunks) * share))).indices.tolist()
    return {j for c in best for j in chunks[c]}


def _gated_chunk_kept(s: torch.Tensor, size: int, spiky: int, budget: int) -> set[int]:
    """kvpress's entropy-gated ChunkKV rule on one score row ``[T]``: chunks by mean, best first, kept whole until
    ``budget`` is spent, except that a chunk at or above the median mean and below the median normalised entropy
    gives only its ``spiky`` best tokens; what is left is topped up with the best remaining tokens."""
    t = len(s)
    chunks = [list(range(lo, min(t, lo + size))) for lo in range(0, t, size)]
    means, entropy = [], []
    for c in chunks:  # in float32, as kvpress: a chunk's entropy can sit at the median to float rounding
        x = s[c] - s[c].min().clamp(max=0.0)
        p = x / (x.sum() + 1e-8)
        h = -(p * (p + 1e-8).log()).sum()
        means.append(s[c].mean())
        entropy.append(torch.zeros(()) if len(c) == 1 else (h / math.log(len(c))).clamp(0.0, 1.0))
    means, entropy = torch.stack(means).tolist(), torch.stack(entropy)
    mean_cut, entropy_cut = torch.tensor(means).median(), entropy.median()
    entropy = entropy.tolist()
    kept: set[int] = set()
    for i in sorted(range(len(chunks)), key=lambda i: -means[i]):
        if budget <= 0:
            break
        n = min(len(chunks[i]), budget)
        if means[i] >= mean_cut and entropy[i] < entropy_cut:
            n = min(n, spiky)
        kept |= {chunks[i][j] for j in s[chunks[i]].topk(n).indices.tolist()}
        budget -= n
    rest = [j for j in range(t) if j not in kept]
    return kept | {rest[j] for j in s[rest].topk(min(budget, len(rest))).indices.tolist()} if budget > 0 else kept


def test_kvpress_disagreements_are_the_stated_rules(tiny_dir):
    """docs/kv-breadth.md's reasons for the pairs that keep other slots than kvpress, checked on the agreement
    test's model and tokens: kvpress's rule, written out here from its definition, gives kvpress's kept sets."""
    kvpress_or_skip()
    ids = (torch.randperm(250, generator=torch.Generator().manual_seed(5)) + 3)[:200].tolist()
    t, window = len(ids), 64
    share = 100.5 / t  # the bridge's ratio for round(0.5 x 200) = 100 kept (kvpress keeps int((1 - ratio) x T))
    names = ("snapkv", "pyramidkv", "kvcompose", "chunkkv", "entropy_chunk")
    bridge = Bridge(str(tiny_dir), None)
    try:
        got = {p.name: res for p, _, res in bridge.scores(ids, [(PRESSES[n], 0.5) for n in names])}
    finally:
        bridge.close()
    kept = {n: {int(i): [set(h) for h in heads] for i, heads in got[n]["kept"].items()} for n in names}
    snap = {int(i): torch.tensor(s) for i, s in got["snapkv"]["scores"].items()}  # [Hkv, T], the window at max + 1

    # PyramidKV: its layer budgets slope at keep 0.5 on 200 tokens (the bottom layer capped at T - window, the top
    # at 2 x 100.5 - 136 = 65 >= window), and each layer keeps the top of the same SnapKV scores (nested sets)
    top = t - window
    low = 2 * share * t - top
    budgets = [round(top - layer * (top - low) / 2) for layer in range(3)]
    assert budgets == [136, 100, 65]
    for layer, n in enumerate(budgets):
        for h, heads in enumerate(kept["pyramidkv"][layer]):
            assert len(heads) == n
            assert heads == set(snap[layer][h].topk(n).indices.tolist())

    # ChunkKV and its entropy gate: one choice per layer for all heads (the scores summed over heads), the window
    # ranked inside the chunk grid by its max + 1 score
    for layer, s in snap.items():
        one = _chunkkv_kept(s.sum(0), 20, share)
        gated = _gated_chunk_kept(s.sum(0), 10, 4, int(t * share))
        assert all(h == one for h in kept["chunkkv"][layer]), layer
        assert all(h == gated for h in kept["entropy_chunk"][layer]), layer

    # KVCompose: each query head's max attention from the context's second copy, averaged over the GQA group (our
    # default: the group's max), plus the layer's mean over its KV heads; composite tokens set the counts (the
    # oracle's T x 2T attention comes from eager attention on the tiny model)
    eager = LlamaForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        attn = eager(torch.tensor([ids + ids]), output_attentions=True).attentions
    hkv = eager.config.num_key_value_heads
    scores = []
    for a in attn:
        per_head = a[0, :, t:, :t].amax(1).view(hkv, -1, t)  # [Hkv, G, T]
        s = per_head.mean(1)
        scores.append(s + s.mean(0, keepdim=True))
    composite = torch.stack([s.sort(-1, descending=True).values.mean(0) for s in scores])  # [L, T]
    counts = torch.bincount(composite.flatten().topk(int(composite.numel() * share)).indices // t, minlength=3)
    for layer, s in enumerate(scores):
        for h, heads in enumerate(kept["kvcompose"][layer]):
            assert heads == set(s[h].topk(int(counts[layer])).indices.tolist()), (layer, h)


def test_kvpress_matched_presses_agree(tiny_dir):
    """The same cells through kvpress (its own environment and hooks) and tokensieve agree to float rounding.
    The context repeats no token: repeated tokens have equal key norms in layer 0 (RoPE keeps norms), and
    the two libraries break such exact ties differently (tokensieve keeps the later token)."""
    from tokensieve.measure.tasks import Sample

    kvpress_or_skip()
    model, tok = ts.load_model(str(tiny_dir))
    ids = (torch.randperm(250, generator=torch.Generator().manual_seed(5)) + 3).tolist()
    sample = Sample("fidelity", 0, 200, context_ids=ids[:200], continuation=ids[200:217], meta={"greedy": 8})
    ctx = torch.tensor([sample.context_ids])
    names = ("streaming", "knorm", "observed_attention", "tova")
    specs = [MethodSpec.parse(PRESSES[n].matched) for n in names]
    pre = ts.prefill(model, tok, ctx, methods=[s.method() for s in specs])
    ref = ev.FidelityRef.build(pre.uncompressed(), sample.continuation, int(pre.last_logits[0].argmax()), 8)
    bridge = Bridge(str(tiny_dir), None)
    try:
        cells = [(None, 1.0), *((PRESSES[n], 0.5) for n in names)]
        got = {p.name if p else "full": res for p, _, res in bridge.run(sample, cells)}
    finally:
        bridge.close()
    for n, spec in zip(("full", *names), (None, *specs), strict=True):
        c = pre.uncompressed() if spec is None else pre.compress(spec.method(), keep=0.5)
        mine = ev.fidelity_rows(c, ref).value[0]
        assert "error" not in got[n], got[n]
        assert got[n]["kv_bytes"] == c.stats.kv_bytes, n
        theirs = torch.tensor(got[n]["target_logprobs"])
        torch.testing.assert_close(torch.tensor(mine["target_logprobs"]), theirs, atol=3e-5, rtol=0), n


# --- the real tokenizer and model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer

    from tokensieve.runtime.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2"), local_files_only=True)


@pytest.mark.real
@pytest.mark.parametrize("n", [1024, 2048])
def test_real_tokenizer_lengths(smol_tok, n):
    """Lengths are in SmolLM2's own tokens, chat template included, within one sentence of the target."""
    fmt = ts.PromptFormat(smol_tok)
    for task in expand_tasks("all"):
        s = task.sample(smol_tok, n, 0)
        got = len(s.context_ids) if s.context_ids is not None else len(fmt.context_ids(s.context))
        assert n - (60 if "prose" in task.spec() else 12) <= got <= n, (task.spec(), got)


@pytest.mark.real
def test_real_model_bench_cells(smollm2, tmp_path):
    """A small sweep on SmolLM2: the full cache finds the needle, and compressing moves the fidelity metrics
    the right way (KL above 0 and growing as fewer tokens are kept)."""
    fid = get_task("fidelity:continuation=24:greedy=8")
    cfg = Config(
        tasks=[fid, get_task("niah_single")],
        lengths=[512],
        methods=[MethodSpec.parse("snapkv")],
        keeps=[0.5, 0.1],
        samples=1,
        out=tmp_path,
        threads=None,
    )
    cells = {(c["task"], c["method"], c["keep"]): c for c in _cells(run(cfg))}
    assert cells[("niah_single", "full", 1.0)]["score"] == 1.0
    kl = [cells[(fid.spec(), "snapkv", k)]["metrics"]["kl"] for k in (0.5, 0.1)]
    assert 0.0 < kl[0] < kl[1]
