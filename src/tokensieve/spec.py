"""Compact specs for things with parameters, as used on the command line: ``name:k=v:k=v``, and the one
parser of every subcommand's ``--param name=value``.

``snapkv:window=64:kernel=5:pooling=avg`` or ``niah_single:haystack=prose``. Values are read as JSON
when they parse (numbers, booleans, null), else kept as strings. The colon keeps specs free of commas,
so lists of them stay comma-separated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tokensieve.errors import ParameterError


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def split_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"name:k=v:k2=v2"`` -> ``("name", {"k": v, "k2": v2})``."""
    name, *parts = text.strip().split(":")
    params: dict[str, Any] = {}
    for part in parts:
        if "=" not in part:
            raise ValueError(f"parameter {part!r} in {text!r} must look like name=value (e.g. {name}:window=64)")
        k, v = part.split("=", 1)
        params[k] = parse_value(v)
    if not name:
        raise ValueError(f"spec {text!r} has no name")
    return name, params


def join_spec(name: str, params: dict[str, Any]) -> str:
    """The inverse of ``split_spec`` (parameters in the given order)."""
    return ":".join([name, *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items())])


def parse_param(text: str, flag: str = "--param", scoped: bool = False, example: str = "") -> tuple[str, Any]:
    """One ``--param`` of any subcommand: ``name=value``, or ``method.name=value`` (``scoped``) where a command
    runs several methods at once; the value is read as in a spec. A malformed one is a ``ParameterError`` whose
    text every subcommand shares (``example``: a well-formed one for the error, else a generic one)."""
    name, sep, raw = text.partition("=")
    if not sep or not name or (scoped and "." not in name):
        form = "METHOD.NAME=VALUE" if scoped else "NAME=VALUE"
        example = example or ("reagent.max_steps=50" if scoped else "window=64")
        raise ParameterError(f"{flag} {text!r} must look like {form}, e.g. {flag} {example}")
    return name, parse_value(raw)


def parse_params(
    items: Iterable[str] | None, flag: str = "--param", scoped: bool = False, example: str = ""
) -> dict[str, Any]:
    """Every ``--param`` of a command: ``{name: value}``, or ``{method: {name: value}}`` when ``scoped``."""
    out: dict[str, Any] = {}
    for text in items or []:
        name, value = parse_param(text, flag, scoped, example)
        if scoped:
            method, _, key = name.partition(".")
            out.setdefault(method, {})[key] = value
        else:
            out[name] = value
    return out
