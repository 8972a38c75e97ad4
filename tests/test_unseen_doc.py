"""docs/unseen.md's tables and README's question-unseen row equal what benchmarks/unseen/unseen_doc.py computes from
the committed results files (issue 26, item 11): a hand edit or a new results row without a rerun fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("unseen_doc", ROOT / "benchmarks/unseen/unseen_doc.py")
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
