"""One lookup for every method family: an id (plus parameter overrides) or an instance, with errors that
name the family a misplaced id belongs to."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from tokensieve.errors import ParameterError, TokenSieveError, UnknownMethodError

T = TypeVar("T")


def _family_of(method: str) -> str | None:
    from tokensieve.kv.budget import ALLOCATORS
    from tokensieve.kv.methods import REGISTRY
    from tokensieve.kv.prune import PRUNERS
    from tokensieve.kv.sparse import SPARSE

    if method in REGISTRY:
        return "a prefill method: use tokensieve.compress / Compressed, or DecodeCache for decode eviction"
    if method in SPARSE:
        return "a sparse-decoding method: use tokensieve.decode or SparseCache"
    if method in PRUNERS:
        return "a prefill-pruning method: use tokensieve.decode or tokensieve.kv.prune"
    if method in ALLOCATORS:
        return f"a budget allocator: pass allocator={method!r}"
    return None


def instantiate(registry: dict[str, type[T]], base: type[T], family: str, method: str | T, params: dict[str, Any]) -> T:
    """``registry[method](**params)``, or ``method`` itself when it already is an instance of ``base``."""
    if isinstance(method, base):
        if params:
            raise TypeError("pass parameters either to the method instance or as keywords, not both")
        return method
    cls = registry.get(method)  # type: ignore[arg-type]
    if cls is None:
        where = _family_of(str(method))
        hint = f"; {method!r} is {where}" if where else ""
        raise UnknownMethodError(
            f"unknown {family} {method!r}; choose one of: {', '.join(registry)} (see `tokensieve methods`){hint}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}  # type: ignore
    for name, value in params.items():
        if name in fields:
            check_param(method, name, value, fields[name].default)
    try:
        return cls(**params)
    except TokenSieveError:
        raise
    except TypeError as e:
        raise UnknownMethodError(f"bad parameter for method {method!r} ({e}); it takes: {', '.join(fields)}") from None
    except ValueError as e:
        raise ParameterError(f"bad parameter for method {method!r}: {e}") from None


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
