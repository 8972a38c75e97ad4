"""The declared transformers range and the kvpress bridge's environment check (no kvpress needed)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import transformers
from packaging.version import Version

from tokensieve import compat
from tokensieve.cli import main
from tokensieve.measure.bench import kvpress_bridge

ROOT = Path(__file__).resolve().parents[1]


def test_declared_range_is_the_tested_one():
    """pyproject's floor, the floor CI installs and compat's tested range say the same; this run is inside it."""
    floor, newest = compat.TESTED_TRANSFORMERS
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"transformers>=([\d.]+),<6"', pyproject).group(1) == floor.rsplit(".0", 1)[0]
    assert f"FLOOR=${{TRANSFORMERS_FLOOR:-{floor}}}" in (ROOT / "scripts" / "setup_floor.sh").read_text()
    assert floor in (ROOT / "README.md").read_text() and newest in (ROOT / "README.md").read_text()
    version = Version(transformers.__version__)
    assert Version(floor) <= version, f"transformers {transformers.__version__} is below the floor {floor}"
    # a newer release than the declared newest fails here until README, pyproject and compat name it (CI prints it)
    assert version <= Version(newest), (
        f"transformers {transformers.__version__} is newer than the tested {newest}: run the suite on it, then update "
        "compat.TESTED_TRANSFORMERS, README.md, pyproject.toml and docs/compat.md"
    )


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No kvpress environment anywhere the bridge looks (cwd, the repository, $TOKENSIEVE_KVPRESS_PYTHON)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENSIEVE_KVPRESS_PYTHON", raising=False)
    monkeypatch.setattr(kvpress_bridge, "__file__", str(tmp_path / "a" / "b" / "c" / "kvpress_bridge.py"))
    return tmp_path


def test_missing_kvpress_environment_is_a_typed_error(nowhere):
    with pytest.raises(kvpress_bridge.KVPressUnavailable, match=r"scripts/setup_kvpress\.sh"):
        kvpress_bridge.find_python()
    assert kvpress_bridge.available() is None
    with pytest.raises(kvpress_bridge.KVPressUnavailable):
        kvpress_bridge.Bridge("smollm2", 1)


def test_cli_compare_kvpress_without_its_environment_exits_2(nowhere, capsys):
    argv = ["bench", "--out", str(nowhere / "out"), "--compare", "kvpress", "--tasks", "niah_single"]
    rc = main([*argv, "--lengths", "256", "--samples", "1", "--methods", "h2o", "--keep", "0.5", "--model", "/no"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("tokensieve: error:") and "\n" not in err


def _fake_python(where: Path, with_kvpress: bool) -> Path:
    """An interpreter wrapper that finds a (stub) kvpress package, or not."""
    site = where / "site"
    if with_kvpress:
        (site / "kvpress").mkdir(parents=True)
        (site / "kvpress" / "__init__.py").write_text("")
    bin_dir = where / ".venv-kvpress" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.parametrize("with_kvpress", [True, False])
def test_availability_check_probes_the_environment(nowhere, with_kvpress, monkeypatch):
    python = _fake_python(nowhere, with_kvpress)
    assert kvpress_bridge.find_python() == str(python)  # found in the working directory
    assert kvpress_bridge.available() == (str(python) if with_kvpress else None)
    monkeypatch.chdir(nowhere / "site" if with_kvpress else ROOT / "tests")
    monkeypatch.setenv("TOKENSIEVE_KVPRESS_PYTHON", str(python))  # or named by the environment variable
    assert kvpress_bridge.find_python() == str(python)
