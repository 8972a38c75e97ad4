"""Typed errors. Each message names the problem and the fix; the CLI prints it as one line."""

from __future__ import annotations


class TokenSieveError(Exception):
    """Base class of every error tokensieve raises on bad input."""


class InvalidKeepError(TokenSieveError, ValueError):
    pass


class BudgetError(TokenSieveError, ValueError):
    pass


class EmptyContextError(TokenSieveError, ValueError):
    pass


class UnknownMethodError(TokenSieveError, ValueError):
    pass


class UnsupportedArchitectureError(TokenSieveError, ValueError):
    pass


class PaddingError(TokenSieveError, ValueError):
    pass


class ModelNotFoundError(TokenSieveError, FileNotFoundError):
    pass


class NotPreparedError(TokenSieveError, RuntimeError):
    pass


def check_keep(keep: float) -> float:
    if not isinstance(keep, int | float) or not 0.0 < float(keep) <= 1.0:
        raise InvalidKeepError(
            f"keep ratio {keep!r} is outside (0, 1]: pass the fraction of context tokens to keep, "
            "e.g. keep=0.25 for 4x compression"
        )
    return float(keep)


def check_budget(budget: int, context_tokens: int) -> int:
    if not isinstance(budget, int) or budget < 1:
        raise BudgetError(f"token budget {budget!r} must be a positive integer (tokens kept per head)")
    if budget >= context_tokens:
        raise BudgetError(
            f"token budget {budget} is not smaller than the context ({context_tokens} tokens): "
            f"nothing would be evicted; use a budget below {context_tokens} or keep=1.0"
        )
    return budget


class CalibrationError(TokenSieveError, RuntimeError):
    pass


class ParameterError(TokenSieveError, ValueError):
    pass


class BatchError(TokenSieveError, ValueError):
    pass


def check_count(name: str, value: object) -> int:
    """A positive whole number (``max_new_tokens`` and the like), or a one-line typed error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} {value!r} must be a positive whole number, e.g. {name}=32")
    return value


class EngagementError(NotPreparedError):
    """Something tokensieve attached to a model did not act during the forward it was attached for."""


class NoClsTokenError(TokenSieveError, ValueError):
    pass


class NotEngagedError(TokenSieveError, RuntimeError):
    pass


class ImageError(TokenSieveError, ValueError):
    pass


class PageError(TokenSieveError, ValueError):
    pass


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """A method parameter that takes one of a few words: a one-line ``ParameterError`` naming them otherwise."""
    if value not in choices:
        raise ParameterError(f"{name}={value!r}: use {' or '.join(repr(c) for c in choices)}")


class EngineError(TokenSieveError, RuntimeError):
    """An inference engine (llama.cpp) refused an operation tokensieve needs: removing positions, shifting them,
    restoring a saved sequence, or decoding a batch."""


class MissingExtraError(TokenSieveError, ImportError):
    """An optional dependency (an extra of the package) is not installed."""
