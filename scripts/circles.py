"""Count the import circles between tokensieve's modules, imports under ``TYPE_CHECKING`` included.

A circle is a strongly connected group of two or more modules (each reaches every other by imports); one
shortest loop is printed per group. ``lint-imports`` skips type-only imports (its contracts would see none
of these); ``tests/test_house.py`` asserts the count is zero, and CI (``.ci/run``) runs this script, which exits
1 when there is any. Usage: ``python scripts/circles.py [-q]`` (``-q``: the count only).
"""

from __future__ import annotations

import sys
from collections import deque

import grimp


def import_graph(package: str = "tokensieve") -> grimp.ImportGraph:
    return grimp.build_graph(package, include_external_packages=False, exclude_type_checking_imports=False)


def edges_of(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def groups(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


def shortest_loop(edges: dict[str, set[str]], group: list[str]) -> list[str]:
    """One shortest loop through the group's first module (breadth-first inside the group)."""
    members, start = set(group), group[0]
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & members):
            if child == start:
                loop = [node]
                while loop[-1] != start:
                    loop.append(parent[loop[-1]])
                return [*reversed(loop), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return group


def circles(package: str = "tokensieve") -> list[list[str]]:
    """One loop per circle (strongly connected group) in ``package``'s import graph, type-only imports included."""
    edges = edges_of(import_graph(package))
    return [shortest_loop(edges, g) for g in groups(edges)]


def main() -> None:
    found = circles()
    print(f"import circles (type-only imports included): {len(found)}")
    if found and "-q" not in sys.argv[1:]:
        for loop in found:
            print("  " + " -> ".join(loop))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
