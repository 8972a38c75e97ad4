"""The explanation benchmark's protocol (issue 26, item 8): multi-value answers and their needle mask, samples per
length, the saturation table and the computed "beats random" column. A tiny random Llama and a byte-level
tokenizer (one token per byte, so a needle's tokens are its characters) stand in for the model."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import COMMON
from tokensieve.core.observe.hooks import prepare
from tokensieve.measure.tasks import get_task, score

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks/explain"))
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/explain/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _script("explain_bench")
table = _script("explain_table")


@pytest.fixture(scope="module")
def byte_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**COMMON, "vocab_size": 258, "max_position_embeddings": 2048}))
    return prepare(model.eval())  # as load_model does: attention-reading methods need it


def test_multivalue_answer_and_needle_mask_cover_every_value(byte_tok, byte_model):
    sample = get_task("niah_multivalue").sample(byte_tok, 600, 0)
    values = [it.text for it in sample.questions[0].items]
    assert len(values) == 4
    problem, needle, answer = bench.build(byte_model, byte_tok, sample)
    # the answer lists every value once, in the order the needles appear in the context
    at = [sample.context.find(v) for v in answer.split(", ")]
    assert sorted(answer.split(", ")) == sorted(values) and at == sorted(at) and min(at) >= 0
    assert score(answer, sample.questions[0]) == (1.0, [True] * 4)  # what the task's recall scorer reads
    assert byte_tok.decode(problem.target.ids) == " " + answer and problem.target.measure == "prob"
    # one byte a token: the mask is exactly the values' characters, wherever each value occurs
    chars = set()
    for v in values:
        start = sample.context.find(v)
        while start >= 0:
            chars.update(range(start, start + len(v)))
            start = sample.context.find(v, start + 1)
    ctx = byte_tok(sample.context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(ctx) == problem.n_context
    assert needle.tolist() == [a in chars for a, _ in ctx]
    assert int(needle.sum()) >= sum(len(v) for v in values)
    logprob, _, _ = bench.build(byte_model, byte_tok, sample, "logprob")
    assert logprob.target.measure == "logprob" and float(logprob.score(logprob.ids[None])[0]) < 0


def test_single_needle_answer_is_the_value(byte_tok, byte_model):
    sample = get_task("niah_single").sample(byte_tok, 400, 1)
    _, needle, answer = bench.build(byte_model, byte_tok, sample)
    assert answer == sample.questions[0].items[0].text and int(needle.sum()) >= len(answer)


def test_explain_problem_shares_the_random_reference_across_methods(byte_tok, byte_model):
    sample = get_task("niah_single").sample(byte_tok, 300, 0)
    problem, needle, _ = bench.build(byte_model, byte_tok, sample)
    rows = bench.explain_problem(problem, needle, ["attention", "grad_x_input"], True, 3, 1, seed=2)
    assert [r["method"] for r in rows] == ["attention", "grad_x_input"]
    for key in ("comprehensiveness_random", "comprehensiveness_random_sd", "saturation@1_random", "target"):
        assert str(rows[0][key]) == str(rows[1][key])  # str: a nan (no removable score here) equals itself
    assert rows[0]["n_random"] == 3 and rows[0]["needle_tokens"] == int(needle.sum())
    assert all(0 <= r["needle_recall@5"] <= 1 for r in rows)


def test_samples_per_length():
    assert bench.per_length([512, 2048], [20, 10]) == {512: 20, 2048: 10}
    assert bench.per_length([512, 2048], [3]) == {512: 3, 2048: 3}
    with pytest.raises(SystemExit, match="one per length"):
        bench.per_length([512, 2048], [1, 2, 3])


def _rows(method: str, ratio: list[float], task: str = "t", length: int = 512, **extra) -> list[dict]:
    """Synthetic rows: sample i's random comprehensiveness 0.5 + i/100, the method's ``ratio[i]`` times it."""
    out = []
    for i, q in enumerate(ratio):
        ref = 0.5 + i / 100
        out.append({"task": task, "method": method, "length": length, "index": i, "seconds": 1.0 + i,
                    "needle_recall@5": 0.5, "needle_top1": float(i % 2), "comprehensiveness": q * ref,
                    "comprehensiveness_random": ref, "comprehensiveness_random_sd": 0.1, "comp@1": 0.2,
                    "target": 0.9, **extra})  # fmt: skip
    return out


def _bounds(cell: str) -> tuple[float, float]:
    lo, hi = cell.split("[")[1].split("]")[0].split(", ")
    return float(lo), float(hi)


def test_beats_random_is_computed_from_the_paired_interval():
    rng = random.Random(0)
    clear = [1.5 + rng.uniform(-0.05, 0.05) for _ in range(12)]  # every sample well above random
    noisy = [1.4, 0.6] * 6  # mean 1.0: the interval straddles 1
    below = [0.5 + rng.uniform(-0.05, 0.05) for _ in range(12)]
    rows = _rows("clear", clear) + _rows("noisy", noisy) + _rows("below", below)
    lines = table.table_rows(rows)
    body = {ln.split(" | ")[1]: ln.split(" | ") for ln in lines if ln.startswith("| t |")}
    assert body["clear"][-1].rstrip(" |") == "comp"
    assert body["noisy"][-1].rstrip(" |") == "none"
    assert body["below"][-1].rstrip(" |") == "none; below random: comp"
    lo, hi = _bounds(body["noisy"][7])
    assert lo < 1 < hi and _bounds(body["clear"][7])[0] > 1 and _bounds(body["below"][7])[1] < 1
    # suff: lower is better; its interval excluding 1 from below is a "beats"
    ivs = {"sufficiency": table.ratio_interval([{"sufficiency": 0.5 + i / 100, "sufficiency_random": 1.0}
                                                for i in range(10)], "sufficiency")}  # fmt: skip
    assert table.verdict(ivs) == "suff"
    # the top-1 hit is a proportion of samples: Wilson (6 of 12 -> 0.5 and a symmetric interval inside [0, 1])
    lo, hi = _bounds(body["clear"][6])
    assert body["clear"][6].startswith("0.5 [") and lo == pytest.approx(1 - hi) and 0 < lo < 0.5
    # the random reference's spread between draws is shown beside its mean
    assert body["clear"][10] == "0.555 (sd 0.1)"


def test_saturation_table_per_task_and_length():
    rows = []
    for i in range(4):  # two methods on the same four problems: one random reference per problem
        for m, sat in (("a", 0.9), ("b", 0.3)):
            rows += [{"task": "multi", "method": m, "length": 512, "index": i, "comp@1": 0.1, "target": 0.8,
                      "saturation@1": sat + i / 100, "saturation@1_random": 0.05 * (i + 1)}]  # fmt: skip
    rows += [{"task": "single", "method": "a", "length": 512, "index": 0, "comp@1": 0.45, "target": 0.9}]  # old row
    lines = table.saturation_table(rows)
    multi = next(ln for ln in lines if ln.startswith("| multi |")).split(" | ")
    assert multi[2] == "4" and multi[5] == "a"  # n counts problems, not rows; the best method by mean
    assert multi[4].startswith("0.125 [") and multi[6].startswith("0.915 [")
    single = next(ln for ln in lines if ln.startswith("| single |")).split(" | ")
    assert single[4] == "not recorded" and single[6] == "0.5 (n=1) |"  # comp@1 / target before the field existed


def test_a_rerun_keeps_whole_samples_and_runs_the_rest(byte_tok, byte_model, tmp_path, monkeypatch):
    calls = []

    def fake_explain(problem, needle, methods, faithful, n_random, soft, index):
        calls.append(index)
        if index == 1 and len(calls) == 2:  # the first run stops inside sample 1: only one method's row lands
            return [{"method": methods[0], "needle_recall@5": 0.0}]
        return [{"method": m, "needle_recall@5": 1.0} for m in methods]

    monkeypatch.setattr(bench.tokensieve, "load_model", lambda name: (byte_model, byte_tok))
    monkeypatch.setattr(bench, "explain_problem", fake_explain)
    monkeypatch.setattr(bench, "summarize", lambda rows, args, out: None)
    argv = [
        "x",
        "--tasks",
        "niah_single",
        "--lengths",
        "300",
        "--methods",
        "attention",
        "rollout",
        "--out",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--samples", "2"])
    bench.main()
    assert calls == [0, 1]
    monkeypatch.setattr(sys, "argv", [*argv, "--samples", "3"])
    bench.main()
    assert calls == [0, 1, 1, 2]  # sample 0 kept; sample 1 (one method missing) and sample 2 run
    rows = [line for line in (tmp_path / "rows.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 6  # three samples x two methods, the partial sample's row dropped
    monkeypatch.setattr(sys, "argv", [*argv, "--samples", "3", "--target", "logprob"])
    bench.main()
    assert calls[4:] == [0, 1, 2]  # another target is another measurement
