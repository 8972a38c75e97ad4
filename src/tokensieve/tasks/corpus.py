"""Natural prose that ships with the package (original essays, MIT-licensed with the code)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def paragraphs() -> tuple[str, ...]:
    text = files("tokensieve").joinpath("data/essays.txt").read_text(encoding="utf-8")
    return tuple(p.strip() for p in text.split("\n\n") if len(p.split()) > 12)
