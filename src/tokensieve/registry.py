"""One lookup for every method family: an id (plus parameter overrides) or an instance, with errors that
name the family a misplaced id belongs to."""

from __future__ import annotations

from typing import Any, TypeVar

from .errors import UnknownMethodError

T = TypeVar("T")


def _family_of(method: str) -> str | None:
    from .budget import ALLOCATORS
    from .methods import REGISTRY
    from .prune import PRUNERS
    from .sparse import SPARSE

    if method in REGISTRY:
        return "a prefill method: use tokensieve.compress / Compressed, or DecodeCache for decode eviction"
    if method in SPARSE:
        return "a sparse-decoding method: use tokensieve.decode or SparseCache"
    if method in PRUNERS:
        return "a prefill-pruning method: use tokensieve.decode or tokensieve.prune"
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
    try:
        return cls(**params)
    except TypeError as e:
        names = ", ".join(n for n in cls.__dataclass_fields__ if not n.startswith("_"))  # type: ignore[attr-defined]
        raise UnknownMethodError(f"bad parameter for method {method!r} ({e}); it takes: {names}") from None
