"""One lookup for every method family: an id (plus parameter overrides) or an instance, with errors that
name the family a misplaced id belongs to.

Families register themselves (``register_family``) when their package is imported; this module imports
none of them, so it sits at the bottom of the house and every consumer can use it. ``families()`` is what
``tokensieve methods`` lists. ``Registered`` is the one small base that gives every member of every family
(methods, pruners, allocators, explainers, training rules, quantization recipes) its ``id/paper/rule/kind``,
``params()`` and ``describe()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from tokensieve.errors import ParameterError, TokenSieveError, UnknownMethodError

T = TypeVar("T")


@dataclass(frozen=True)
class Family:
    """A registered family: its members by id, how to use one (``usage`` may name ``{id}``), the package that
    registered it, and its ``tokensieve methods`` rows (``listing``: one row per member, or None to leave one
    out; the default is each member's ``describe()``)."""

    name: str
    registry: dict[str, Any]
    usage: str
    package: str
    listing: Callable[[Any], dict[str, Any] | None] | None = None

    def rows(self) -> list[dict[str, Any]]:
        show = self.listing or (lambda cls: cls().describe())
        return [row for cls in self.registry.values() if (row := show(cls)) is not None]


# family name -> its Family, in registration order
_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    registry: dict[str, Any],
    usage: str,
    package: str = "",
    listing: Callable[[Any], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Make ``registry``'s ids known to every lookup's error hint and to ``tokensieve methods``; ``package`` is
    the registering module's ``__name__`` (the catalog imports it). Returns ``registry`` (later updates to it
    stay visible)."""
    _FAMILIES[name] = Family(name, registry, usage, package, listing)
    return registry


def families() -> list[Family]:
    """Every family registered so far, in registration order (import a family's package to register it)."""
    return list(_FAMILIES.values())


def usage_of(method: str) -> str | None:
    """How to use ``method`` if some registered family has it, else None."""
    for family in _FAMILIES.values():
        if method in family.registry:
            return family.usage.format(id=method)
    return None


@dataclass
class Registered:
    """What every registered method, pruner and allocator says about itself (``tokensieve methods`` lists it)."""

    id: ClassVar[str]
    paper: ClassVar[str] = ""
    rule: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """The constructor's parameters (fields set after construction, such as a step count, are not)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init and not f.name.startswith("_")}

    def describe(self) -> dict[str, Any]:
        # a default that is not plain data (a replacer object, say) is named by its type: the row stays JSON
        defaults = {k: v if isinstance(v, _PLAIN) else type(v).__name__ for k, v in self.params().items()}
        return {"id": self.id, "kind": self.kind, "paper": self.paper, "rule": self.rule, "defaults": defaults}


_PLAIN = (int, float, str, bool, type(None), dict, list, tuple)


def instantiate(
    registry: dict[str, type[T]],
    base: type[T],
    family: str,
    method: str | T,
    params: dict[str, Any],
    noun: str = "method",
) -> T:
    """``registry[method](**params)``, or ``method`` itself when it already is an instance of ``base``.
    ``noun`` names one of the family's members in the errors (``method``, ``allocator``)."""
    if isinstance(method, base):
        if params:
            raise TypeError(f"pass parameters either to the {noun} instance or as keywords, not both")
        return method
    cls = registry.get(method)  # type: ignore[arg-type]
    if cls is None:
        where = usage_of(str(method))
        hint = f"; {method!r} is {where}" if where else ""
        raise UnknownMethodError(
            f"unknown {family} {method!r}; choose one of: {', '.join(registry)} (see `tokensieve methods`){hint}"
        )
    known = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}  # type: ignore
    for name, value in params.items():
        if name in known:
            check_param(method, name, value, known[name].default)
    try:
        return cls(**params)
    except TokenSieveError:
        raise
    except TypeError as e:
        takes = ", ".join(known) or "no parameters"
        raise UnknownMethodError(f"bad parameter for {noun} {method!r} ({e}); it takes: {takes}") from None
    except ValueError as e:
        raise ParameterError(f"bad parameter for {noun} {method!r}: {e}") from None


def check_param(method: Any, name: str, value: Any, default: Any) -> None:
    """A parameter's value must be of its default's kind (a number for a number, a flag for a flag): the
    command line hands over text, and ``window="abc"`` would otherwise fail deep inside the method."""
    if default is dataclasses.MISSING or default is None or value is None:
        return
    number = isinstance(default, int | float) and not isinstance(default, bool)
    if number and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ParameterError(f"parameter {name}={value!r} of {method!r} must be a number (like its default {default})")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ParameterError(f"parameter {name}={value!r} of {method!r} must be true or false")
