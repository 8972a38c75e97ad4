"""One lookup for every method family: an id (plus parameter overrides) or an instance, with errors that
name the family a misplaced id belongs to.

Families register themselves (``register_family``) when their package is imported; this module imports
none of them, so it sits at the bottom of the house and any consumer can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from tokensieve.errors import UnknownMethodError

T = TypeVar("T")

# family name -> (its registry, how to use one of its ids), in registration order
_FAMILIES: dict[str, tuple[dict[str, Any], str]] = {}


def register_family(name: str, registry: dict[str, Any], usage: str) -> dict[str, Any]:
    """Make ``registry``'s ids known to every lookup's error hint (``usage`` may name ``{id}``); returns
    ``registry`` (later updates to it stay visible)."""
    _FAMILIES[name] = (registry, usage)
    return registry


def family_of(method: str) -> str | None:
    """How to use ``method`` if some registered family has it, else None."""
    for registry, usage in _FAMILIES.values():
        if method in registry:
            return usage.format(id=method)
    return None


def instantiate(registry: dict[str, type[T]], base: type[T], family: str, method: str | T, params: dict[str, Any]) -> T:
    """``registry[method](**params)``, or ``method`` itself when it already is an instance of ``base``."""
    if isinstance(method, base):
        if params:
            raise TypeError("pass parameters either to the method instance or as keywords, not both")
        return method
    cls = registry.get(method)  # type: ignore[arg-type]
    if cls is None:
        where = family_of(str(method))
        hint = f"; {method!r} is {where}" if where else ""
        raise UnknownMethodError(
            f"unknown {family} {method!r}; choose one of: {', '.join(registry)} (see `tokensieve methods`){hint}"
        )
    try:
        return cls(**params)
    except TypeError as e:
        names = ", ".join(n for n in cls.__dataclass_fields__ if not n.startswith("_"))  # type: ignore[attr-defined]
        raise UnknownMethodError(f"bad parameter for method {method!r} ({e}); it takes: {names}") from None


@dataclass
class Registered:
    """What every registered method, pruner and allocator says about itself (``tokensieve methods`` lists it)."""

    id: ClassVar[str]
    paper: ClassVar[str] = ""
    rule: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "paper": self.paper, "rule": self.rule, "defaults": self.params()}
