"""Doc tables owned by a script equal what the script computes from the committed results files (issue 26, items 11
and 16): docs/unseen.md and README's unseen rows (benchmarks/unseen/unseen_doc.py), docs/explain.md's faithfulness
table (benchmarks/explain/explain_table.py), the serving simulator's table (from its rows). A hand edit or a new
results row without a rerun fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(path: str = "benchmarks/unseen/unseen_doc.py"):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unseen_doc_and_readme_are_generated_from_results() -> None:
    mod = _script()
    doc = (ROOT / "docs/unseen.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert mod.render_doc(doc) == doc, "docs/unseen.md is stale: run benchmarks/unseen/unseen_doc.py"
    assert mod.render_readme(readme) == readme, "README's unseen row is stale: run benchmarks/unseen/unseen_doc.py"
    # the headline's first kvzip cell, recomputed here by hand from the raw rows: mean over the two tasks per sample
    assert "| 1024 | 30 | 0.900 | `kvzip` |" in doc


def test_explain_faithfulness_table_is_generated_from_rows() -> None:
    mod = _script("benchmarks/explain/explain_table.py")
    common = _script("benchmarks/_common.py")
    runs = [str(ROOT / f"benchmarks/explain/results/protocol2/{task}") for task in ("multivalue", "single")]
    doc = (ROOT / "docs/explain.md").read_text()
    assert common.fill_block(doc, "explain-faith", mod.table(runs)) == doc, "run explain_table.py --doc docs/explain.md"


def test_serving_quality_table_is_generated_from_rows() -> None:
    mod = _script("benchmarks/kv_pages/quality_table.py")
    common = _script("benchmarks/_common.py")
    doc = (ROOT / "docs/serving.md").read_text()
    lines = mod.table(str(ROOT / "benchmarks/kv_pages/results_serving30"))
    assert common.fill_block(doc, "serving-quality", lines) == doc, "run quality_table.py --doc docs/serving.md"


def test_serving_sim_table_is_generated_from_its_rows() -> None:
    mod = _script("benchmarks/serving_sim/serving_sim.py")
    out = ROOT / "benchmarks/serving_sim/results/smollm2"
    rows = [json.loads(ln) for ln in out.with_suffix(".jsonl").read_text().splitlines()]
    lines = mod.table(rows)
    assert len(lines) == len(rows) + 2 and "\n".join(lines) in out.with_suffix(".md").read_text()


def test_md_table_writes_header_rule_and_rows() -> None:
    md_table = _script("benchmarks/_common.py").md_table
    want = ["| a | b |", "|---|---:|", "| 1 |  |", "| x | 2.5 |"]
    assert md_table(["a", "b"], [[1, ""], ["x", 2.5]], align="lr") == want
    assert md_table(["a"], [])[1] == "|---|"
    with pytest.raises(ValueError, match="2 cells under 1 columns"):
        md_table(["a"], [[1, 2]])
    with pytest.raises(ValueError, match="align"):
        md_table(["a", "b"], [], align="l")


def test_quant_paired_differences_match_the_results_readme() -> None:
    mod = _script("benchmarks/quant/paired.py")
    readme = (ROOT / "benchmarks/quant/results/README.md").read_text()
    for row in mod.table()[2:]:
        essays, docs = row.strip("|").split("|")[3:5]
        assert f"|{essays}|{docs}|" in readme, row


def test_benchmark_commands_rerun_as_written() -> None:
    """A results file's command is pasted into a shell: positional values first and bare, unset options and
    switches left out, a set switch bare, values with spaces quoted."""
    import argparse
    import shlex

    command = _script("benchmarks/_common.py").command
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--title", default="Training-free scores")
    p.add_argument("--train")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--plot", action="store_true")
    args = p.parse_args(["runs/a b.jsonl", "--plot"])
    cmd = command("learned/summary.py", args, positional=("results",))
    script = ".venv/bin/python benchmarks/learned/summary.py"
    assert cmd == f"{script} 'runs/a b.jsonl' --title 'Training-free scores' --plot"
    assert p.parse_args(shlex.split(cmd)[2:]) == args
