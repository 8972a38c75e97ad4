"""Compact specs for things with parameters, as used on the command line: ``name:k=v:k=v``.

``snapkv:window=64:kernel=5:pooling=avg`` or ``niah_single:haystack=prose``. Values are read as JSON
when they parse (numbers, booleans, null), else kept as strings. The colon keeps specs free of commas,
so lists of them stay comma-separated.
"""

from __future__ import annotations

import json
from typing import Any


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
