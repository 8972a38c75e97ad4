"""Apply each mutation in ``mutations.py`` to a fresh copy of the repository and check its tests catch it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mutations/run.py [--only ID,...] [--out DIR]

For each mutation: copy src/, tests/ and pyproject.toml to a temporary directory, apply the replacement (it
must match exactly once, so a mutation that no longer applies is reported, not skipped), run its tests there
(``pytest -x -m "not real"``, the copy's src first on the path) and record whether they failed. The
unmutated copy runs first: it must pass, or nothing below means anything. Results: ``results.json`` and
``results.md`` under ``benchmarks/mutations/results/``; exit 1 if any mutation survived.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmarks/_common.py

from _common import run_provenance, write_table  # noqa: E402
from mutations import MUTATIONS, Mutation  # noqa: E402


def copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")


def run_tests(where: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(where / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not real", *tests]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True)
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
    return proc.returncode, time.perf_counter() - start, failed[0] if failed else proc.stdout.strip()[-200:]


def probe(m: Mutation | None, tests: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="tokensieve-mutant-") as tmp:
        where = Path(tmp)
        copy_repo(where)
        if m is not None:
            path = where / m.path
            text = path.read_text()
            if text.count(m.old) != 1:
                return {"id": m.id, "what": m.what, "applied": False, "caught": False}
            path.write_text(text.replace(m.old, m.new))
        rc, seconds, first = run_tests(where, tests)
    return {
        "id": m.id if m else "unmutated",
        "what": m.what if m else "the repository as is (must pass)",
        "applied": True,
        "caught": rc != 0,
        "rc": rc,
        "seconds": round(seconds, 1),
        "evidence": first,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "mutations" / "results"))
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only.split(",")]
    every_test = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    rows = [probe(None, every_test)]
    if rows[0]["caught"]:
        print("the unmutated repository fails its own tests:", rows[0]["evidence"], file=sys.stderr)
        return 2
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mutations/run.py"
    command += f" --only {args.only}" if args.only else ""
    for m in chosen:
        rows.append(probe(m, m.tests))
        r = rows[-1]
        verdict = "CAUGHT" if r["caught"] else "SURVIVED" if r["applied"] else "NOT APPLIED (code moved: update it)"
        print(f"{r['id']:30s} {verdict}  {r.get('seconds', 0):6.1f}s  {r['what']}")
        write(Path(args.out), command, rows, done=len(rows) - 1 == len(chosen))
    survived = [r["id"] for r in rows[1:] if not r["caught"]]
    return 1 if survived else 0


def write(out: Path, command: str, rows: list[dict], done: bool) -> None:
    """Rewritten after every mutation, so an interrupted run still leaves what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "provenance": run_provenance(command), "complete": done, "rows": rows}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# mutation probe\n\n`{command}`\n", "| mutation | caught | seconds | evidence |", "|---|---|---|---|"]
    for r in rows:
        evidence = str(r.get("evidence", "")).replace("|", "\\|")
        verdict = ("yes" if r["caught"] else "NO" if r["applied"] else "not applied") if r["id"] != "unmutated" else (
            "FAILS" if r["caught"] else "passes"
        )
        lines.append(f"| {r['id']} | {verdict} | {r.get('seconds', '')} | {evidence} |")
    if not done:
        lines.append("\n(interrupted: the mutations not listed were not run)")
    write_table(out / "results.md", lines, command)


if __name__ == "__main__":
    sys.exit(main())
