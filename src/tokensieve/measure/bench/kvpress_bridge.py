"""The tokensieve side of ``--compare kvpress``: a persistent worker subprocess in kvpress's environment.

kvpress 0.5.5 pins ``transformers<5.3`` and its hooks read ``cache_position``, which the transformers
tokensieve runs on (5.3+) no longer passes to attention layers, so kvpress cannot share this process.
``scripts/setup_kvpress.sh`` creates ``.venv-kvpress`` (transformers 5.2, kvpress 0.5.5, the same torch);
``kvpress_worker.py`` runs there on the same samples, which are sent to it as text (retrieval) or token
ids (fidelity). The worker never imports tokensieve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokensieve.errors import TokenSieveError
from tokensieve.measure.bench.methods import Press
from tokensieve.measure.tasks import Sample
from tokensieve.runtime.models import resolve

WORKER = Path(__file__).with_name("kvpress_worker.py")
SETUP = "scripts/setup_kvpress.sh"


class KVPressUnavailable(TokenSieveError, RuntimeError):
    pass


def find_python(explicit: str | None = None) -> str:
    """The interpreter that has a working kvpress: --kvpress-python, $TOKENSIEVE_KVPRESS_PYTHON, or
    ``.venv-kvpress/bin/python`` in the current directory or the repository."""
    candidates = [explicit, os.environ.get("TOKENSIEVE_KVPRESS_PYTHON")]
    for root in (Path.cwd(), Path(__file__).resolve().parents[4]):
        candidates.append(str(root / ".venv-kvpress" / "bin" / "python"))
    for c in candidates:
        if c and Path(c).exists():
            return c
    raise KVPressUnavailable(
        "--compare kvpress needs kvpress in its own environment (it pins transformers<5.3): run "
        f"{SETUP} to create .venv-kvpress, or pass --kvpress-python PATH"
    )


def available(explicit: str | None = None) -> str | None:
    """The kvpress interpreter if it exists and imports kvpress, else None (tests skip on None)."""
    try:
        python = find_python(explicit)
    except KVPressUnavailable:
        return None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('kvpress') is None)"  # no heavy import
    ok = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    return python if ok else None


class Bridge:
    """Starts the worker once; ``run`` sends one sample's cells and yields their results."""

    def __init__(self, model: str, threads: int | None, python: str | None = None, log: Path | None = None) -> None:
        self.python = find_python(python)
        self.log = open(log, "a") if log is not None else None  # noqa: SIM115 (lives as long as the worker)
        model_dir = str(resolve(model))
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [self.python, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log if self.log is not None else sys.stderr,
            text=True,
            env=env,
        )
        self._send({"model": model_dir, "threads": threads})
        hello = self._read()
        self.versions = {k: hello.get(k) for k in ("kvpress", "transformers")}

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise KVPressUnavailable(
                f"the kvpress worker ({self.python}) stopped; see {self.log.name if self.log else 'its stderr'} for why"
            )
        return json.loads(line)

    def run(
        self, sample: Sample, cells: list[tuple[Press | None, float]]
    ) -> Iterator[tuple[Press | None, float, dict]]:
        payload = sample.to_dict()
        job_cells = [
            {"press": p.cls if p else None, "params": dict(p.params) if p else {}, "keep": k, "i": i}
            for i, (p, k) in enumerate(cells)
        ]
        self._send({"sample": payload, "cells": job_cells})
        yield from self._results(cells)

    def scores(self, ids: list[int], cells: list[tuple[Press, float]]) -> Iterator[tuple[Press, float, dict]]:
        """Prefill ``ids`` under each press at its keep and yield, per press, the scores its scorer computed per
        layer (``res["scores"]``: layer -> [Hkv][T], absent for a press with no scorer) and each KV head's kept
        slots (``res["kept"]``: layer -> [Hkv][n]); an ``"error"`` instead when the press failed."""
        job_cells = [{"press": p.cls, "params": dict(p.params), "keep": k, "i": i} for i, (p, k) in enumerate(cells)]
        self._send({"scores": {"ids": list(ids)}, "cells": job_cells})
        yield from self._results(cells)

    def _results(self, cells: list) -> Iterator[tuple[Press, float, dict]]:
        """The worker's answers, one per cell, until it says done."""
        while True:
            res = self._read()
            if res.get("done"):
                return
            p, k = cells[res["cell"]["i"]]
            yield p, k, res

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not None:
            self.log.close()
