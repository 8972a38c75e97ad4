"""The base of the wrappers of issue 28 (dms, critical_kv, chunk, entropy_chunk, merging): a rule that ranks with
any eviction method's score (``base``) and decides what to keep its own way. Not a method itself."""

from __future__ import annotations

from dataclasses import dataclass

from tokensieve.errors import ParameterError
from tokensieve.kv.methods.base import REGISTRY, ScoredBy, get_method
from tokensieve.spec import split_spec

WRAPPERS = (
    *("think", "dms", "critical_kv", "critical_adakv", "chunk", "entropy_chunk", "merging", "mikv"),
    *("rerotate", "ratio_decoding", "cam"),
)


@dataclass
class Wrapper(ScoredBy):
    """``base`` is the id of the eviction method whose score it ranks by (its needs, calibration and protected
    tokens come with it), with its own parameters after slashes if any (``base=kvzip/scope=layer``, so that a
    bench spec ``think:base=kvzip/scope=layer:rho=0.5`` stays one spec); the wrapper's own ``act`` decides."""

    base: str = "snapkv"

    def __post_init__(self) -> None:
        if not self.base:
            raise ParameterError(f"{self.id} needs a scorer: pass base=<method id>, e.g. base=kvzip or base=snapkv")
        name, params = split_spec(self.base.replace("/", ":"))
        cls = REGISTRY.get(name)
        if name in WRAPPERS or cls is None or cls.kind != "prefill eviction":
            ok = "the id of an eviction method with a score (snapkv, kvzip, keydiff, ...)"
            raise ParameterError(f"{self.id}: base={self.base!r} must be {ok}")
        self._inner = get_method(name, **params)
