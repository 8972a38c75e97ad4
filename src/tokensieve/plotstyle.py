"""One look for every plot: a method keeps its colour, marker and line style in every figure (derived from its
label by a fixed hash, not from its position in a list), references (the full cache, the unpruned model, SFT)
are black, and figures are written the same way (Agg backend, one dpi, closed after saving).

matplotlib is imported only when a figure is made (it is an optional dependency)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["COLOURS", "LINESTYLES", "MARKERS", "REFERENCES", "pyplot", "save", "style", "styles"]

# matplotlib's tab10, written out so a style is known without importing matplotlib
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip
MARKERS = ("o", "s", "D", "^", "v", "<", ">", "p", "X", "P", "*", "h", "d", "8")  # 140 looks: > every method
LINESTYLES = ("-", "--", "-.", ":")
SLOTS = len(COLOURS) * len(MARKERS) * len(LINESTYLES)
# the baselines every figure compares against: one fixed look, never a method colour
REFERENCES = {
    "full": {"color": "black", "marker": "", "linestyle": "--"},
    "unpruned": {"color": "black", "marker": "", "linestyle": "--"},
    "sft": {"color": "black", "marker": "o", "linestyle": "-"},
    "random": {"color": "#7f7f7f", "marker": "x", "linestyle": ":"},
}


def _slot_style(slot: int) -> dict[str, str]:
    slot %= SLOTS
    c, rest = slot % len(COLOURS), slot // len(COLOURS)
    return {"color": COLOURS[c], "marker": MARKERS[rest % len(MARKERS)],
            "linestyle": LINESTYLES[rest // len(MARKERS)]}  # fmt: skip


def _slot(label: str) -> int:
    # sha1, not hash(): Python salts str hashes per process, and a style must survive between runs
    return int.from_bytes(hashlib.sha1(label.encode()).digest()[:8], "big") % SLOTS


def style(label: str) -> dict[str, str]:
    """The style of one method label (``color``, ``marker``, ``linestyle``: keyword arguments of ``ax.plot``)."""
    if label in REFERENCES:
        return dict(REFERENCES[label])
    return _slot_style(_slot(label))


def styles(labels: Iterable[str]) -> dict[str, dict[str, str]]:
    """Styles for the methods drawn together: each label keeps ``style(label)`` unless an earlier label (in sorted
    order) already took its colour (while colours remain) or its colour and marker; then it moves to the next free
    slot, so two lines never look alike, and up to ten methods get ten different colours."""
    out: dict[str, dict[str, str]] = {}
    used: set[tuple[str, str]] = set()
    colours: set[str] = set()
    for label in sorted(set(labels) & set(REFERENCES)):
        out[label] = style(label)
        colours.add(out[label]["color"])  # random's grey is tab10's: no method shares it in this figure
    for label in sorted(set(labels) - set(REFERENCES)):
        slot = _slot(label)
        s = _slot_style(slot)
        for step in range(1, SLOTS):
            taken = s["color"] in colours if len(colours) < len(COLOURS) else (s["color"], s["marker"]) in used
            if not taken:
                break
            s = _slot_style(slot + step)
        used.add((s["color"], s["marker"]))
        colours.add(s["color"])
        out[label] = s
    return out


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (parents made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
