"""Offline task generators: contexts with known answers, measured in the model's own tokens.

``get_task("niah_single:haystack=prose:value=uuid")`` builds a task from its spec; ``expand_tasks``
turns a command-line list (names, specs, or the groups ``retrieval``, ``fidelity``, ``all``) into tasks.
"""

from __future__ import annotations

from tokensieve.measure.tasks.aggregation import CommonWords, FrequentWords, VariableTracking
from tokensieve.measure.tasks.base import Item, Question, Sample, Task, score
from tokensieve.measure.tasks.fidelity import Fidelity
from tokensieve.measure.tasks.ruler import (
    NiahMultiAsk,
    NiahMultiKey,
    NiahMultiQuery,
    NiahMultiValue,
    NiahSingle,
)
from tokensieve.spec import split_spec

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        NiahSingle,
        NiahMultiKey,
        NiahMultiValue,
        NiahMultiQuery,
        NiahMultiAsk,
        VariableTracking,
        CommonWords,
        FrequentWords,
    )
}
TASKS[Fidelity.name] = Fidelity

# the default mix: each needle variant that matters, plus fidelity
GROUPS: dict[str, list[str]] = {
    "retrieval": [
        "niah_single",
        "niah_single:haystack=prose",
        "niah_single:value=word",
        "niah_single:haystack=prose:value=uuid",
        "niah_multikey",
        "niah_multivalue",
        "niah_multiquery",
        "niah_multiask:haystack=prose",
        "vt",
        "cwe:common=3",  # 10 common words (RULER) is beyond a 135M model even with the full cache
        "fwe",
    ],
    "fidelity": ["fidelity"],
}
GROUPS["all"] = GROUPS["fidelity"] + GROUPS["retrieval"]


def get_task(spec: str) -> Task:
    name, params = split_spec(spec)
    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)} or a group: {', '.join(GROUPS)}")
    try:
        return cls(**params)
    except TypeError:
        names = ", ".join(cls.__dataclass_fields__)
        raise ValueError(f"bad parameter in task spec {spec!r}; {name} takes: {names}") from None


def expand_tasks(text: str) -> list[Task]:
    out: list[Task] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        out.extend(get_task(s) for s in GROUPS.get(part, [part]))
    return out


__all__ = ["GROUPS", "TASKS", "Item", "Question", "Sample", "Task", "expand_tasks", "get_task", "score"]
