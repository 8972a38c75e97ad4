"""A template sentence, model-free, that says what an attribution says: the answer, its top units with
their shares of the positive attribution mass and their line in the context (Feldhus et al., 2023)."""

from __future__ import annotations

from tokensieve.explain.units import Unit, spans


def _ref(u: Unit, n_lines: int) -> str:
    return f"'{u.text}' in line {u.line}" if n_lines > 1 else f"'{u.text}'"


def top_units(units: list[Unit], n: int = 3) -> list[Unit]:
    """The ``n`` units with the largest shares (a value repeated in the context is one unit per place)."""
    ranked = sorted((u for u in units if u.share > 0), key=lambda u: -u.share)
    return ranked[:n]


def verbalize(answer: str, units: list[Unit], method: str, n: int = 3, text: str | None = None) -> str:
    """With the context ``text``, adjacent top words are merged into spans ('pass key')."""
    top = spans(text, units, n) if text is not None else top_units(units, n)
    if not top:
        return f"With {method}, no context word raises the answer '{answer}'."
    n_lines = max(u.line for u in units)
    parts = [f"{_ref(u, n_lines)} ({u.share:.0%})" for u in top]
    head = f"The answer '{answer}' rests mostly on {parts[0]}"
    rest = ", ".join(parts[1:-1])
    tail = (f", {rest}," if rest else "") + (f" and on {parts[-1]}" if len(parts) > 1 else "")
    covered = sum(u.share for u in top)
    return f"{head}{tail} (by {method}; together {covered:.0%} of the attribution)."
