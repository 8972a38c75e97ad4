"""The house's size figures: the ten largest modules in src/, the functions over 60 lines, the import circles.

Usage: ``python scripts/house_metrics.py [--limit 60]`` from the repository root (src/ on the path for the
circle count, e.g. ``PYTHONPATH=src``). Lines are physical lines; a function's length runs from its ``def`` (its
decorators excluded) to its last line, nested functions counted in their own right too.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from circles import circles

SRC = Path(__file__).resolve().parent.parent / "src"


def modules(src: Path = SRC) -> list[tuple[int, str]]:
    """(lines, path relative to src/) for every module, largest first."""
    sizes = [(len(p.read_text(encoding="utf-8").splitlines()), str(p.relative_to(src))) for p in src.rglob("*.py")]
    return sorted(sizes, key=lambda s: (-s[0], s[1]))


def long_functions(src: Path = SRC, limit: int = 60) -> list[tuple[int, str]]:
    """(lines, ``path:line name``) for every function or method longer than ``limit`` lines, longest first."""
    found = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append((n, f"{path.relative_to(src)}:{node.lineno} {node.name}"))
    return sorted(found, key=lambda f: (-f[0], f[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    limit = parser.parse_args().limit
    print("ten largest modules in src/ (lines):")
    for n, name in modules()[:10]:
        print(f"  {n:5d}  {name}")
    longs = long_functions(limit=limit)
    print(f"functions over {limit} lines in src/: {len(longs)}")
    for n, name in longs:
        print(f"  {n:5d}  {name}")
    print(f"import circles (type-only imports included): {len(circles())}")


if __name__ == "__main__":
    main()
