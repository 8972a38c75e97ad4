"""The declared transformers range and the kvpress bridge's environment check (no kvpress needed)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
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


@pytest.mark.integration
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_len", [1, 7, 40])
def test_grouped_sdpa_is_bit_identical_to_transformers_and_never_copies_heads(dtype, q_len, monkeypatch):
    """compat.sdpa lets torch group the KV heads where transformers would copy them (a masked block on CPU): the
    output must equal transformers' own path exactly, and no [B, H, T, D] key copy may reach the kernel."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(q_len)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    q = torch.randn(2, 6, q_len, 16, generator=gen).to(dtype)
    k = torch.randn(2, 2, 50, 16, generator=gen).to(dtype)
    v = torch.randn(2, 2, 50, 16, generator=gen).to(dtype)
    mask = torch.rand(2, 1, q_len, 50, generator=gen) > 0.3
    mask[..., 0] = True  # every query sees something
    want, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kw):
        seen.append(key.shape[1])
        return real(query, key, value, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    got, _ = compat.sdpa(module, q, k, v, mask, dropout=0.0, scaling=0.25, position_ids=None, use_cache=True)
    assert torch.equal(got, want)
    assert seen and (q_len == 1 or seen == [2])  # grouped: the kernel saw the 2 KV heads, not 6 copies
