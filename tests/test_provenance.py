"""Every results file records where it came from: command, commit, versions, machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tokensieve import provenance


def test_provenance_records_command_commit_versions_and_machine() -> None:
    p = provenance.provenance("python benchmarks/x/run.py --n 1")
    assert p["command"] == "python benchmarks/x/run.py --n 1"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:
        assert p["git_commit"] == head.stdout.strip() and isinstance(p["git_dirty"], bool)
    assert {"torch", "transformers", "tokensieve", "numpy"} <= set(p["versions"])
    assert p["machine"]["cores"] >= 1 and p["machine"]["cpu"] and p["machine"]["python"].count(".") == 2
    text = "\n".join(provenance.markdown(p))
    assert "python benchmarks/x/run.py --n 1" in text and p["versions"]["torch"] in text


def test_outside_a_checkout_the_commit_is_none(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_command_line_quotes_arguments() -> None:
    assert provenance.command_line(["benchmarks/a.py", "--x", "a b"]) == "python benchmarks/a.py --x 'a b'"
