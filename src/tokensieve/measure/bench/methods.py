"""What the benchmark sweeps: tokensieve method specs and the kvpress presses they correspond to.

A method spec is ``id[:param=value...][@allocator]``, e.g. ``snapkv``, ``snapkv:window=64:kernel=5``,
``snapkv@pyramid``. A sparse-decoding id (``quest``, ``tidal``, ...) is swept too: it keeps the whole
prefilled cache and its ``keep`` is the fraction of the cache read per decode step. The default sweep is
every registered method whose kind is prefill eviction, so methods added to the registry are benchmarked
without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokensieve.errors import UnknownMethodError
from tokensieve.kv import (
    ALLOCATORS,
    HYBRID_KEYS,
    LEARNED_METHODS,
    OFFLINE_CALIBRATED,
    PAGE_KEYS,
    REGISTRY,
    SPARSE,
    Method,
    Plan,
    SparseMethod,
    get_method,
    get_sparse,
)
from tokensieve.spec import join_spec, split_spec

PREFILL_EVICTION = "prefill eviction"


@dataclass(frozen=True)
class MethodSpec:
    id: str
    params: tuple[tuple[str, Any], ...] = ()
    allocator: str = "uniform"

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        body, _, allocator = text.strip().partition("@")
        name, params = split_spec(body)
        spec = cls(name, tuple(params.items()), allocator or "uniform")
        spec.method()  # fail early on an unknown id or parameter
        if spec.page_kwargs:
            if spec.sparse or spec.modifier:
                raise UnknownMethodError(f"{text!r}: pages= applies to prefill eviction methods only")
            Plan.make(spec.method(), keep=0.5, allocator=spec.allocator, **spec.page_kwargs)  # validates them
        if spec.sparse and spec.allocator != "uniform":
            raise UnknownMethodError(f"{text!r}: a sparse-decoding method keeps the whole cache and takes no allocator")
        if spec.allocator not in ALLOCATORS:
            raise UnknownMethodError(
                f"unknown budget allocator {spec.allocator!r} in {text!r}; choose one of: {', '.join(ALLOCATORS)}"
            )
        return spec

    @property
    def label(self) -> str:
        base = join_spec(self.id, dict(self.params))
        return base if self.allocator == "uniform" else f"{base}@{self.allocator}"

    @property
    def modifier(self) -> bool:
        """An attention modifier: it changes the prefill itself and keeps every token, so each of its cells
        has its own prefill and runs once per sample, at keep 1.0."""
        cls = REGISTRY.get(self.id)
        return cls is not None and cls.changes_prefill

    @property
    def sparse(self) -> bool:
        """Sparse decoding: the whole cache is kept and ``keep`` is the fraction read per decode step."""
        return self.id in SPARSE

    @property
    def page_kwargs(self) -> dict[str, Any]:
        """``pages`` / ``page_layout`` / ``page_agg`` (whole-page eviction, ``kv.pages``): for compress only."""
        return {k: v for k, v in self.params if k in PAGE_KEYS or k in HYBRID_KEYS}  # plan keywords, not the method's

    def method(self) -> Method | SparseMethod:
        params = {k: v for k, v in self.params if k not in PAGE_KEYS and k not in HYBRID_KEYS}
        if self.sparse:
            return get_sparse(self.id, **params)
        return get_method(self.id, **params)


def default_methods() -> list[MethodSpec]:
    """Every registered prefill-eviction method with its defaults, under the uniform allocator; the learned and
    offline-calibrated ones (kvzap, fastkvzip, qfilter) only by name, since they need `tokensieve calibrate
    --learned` first."""
    skip = {*LEARNED_METHODS, *OFFLINE_CALIBRATED}
    return [MethodSpec(mid) for mid, cls in REGISTRY.items() if cls.kind == PREFILL_EVICTION and mid not in skip]


def parse_methods(text: str | None) -> list[MethodSpec]:
    if not text or text == "all":
        return default_methods()
    return [MethodSpec.parse(p) for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class Press:
    """A kvpress press, the tokensieve spec configured to compute the same thing (``matched``, or None),
    the tokensieve method it is usually compared with at defaults (``nominal``), and what differs."""

    name: str  # short id used in results: kvpress:<name>
    cls: str  # kvpress class
    matched: str | None
    nominal: str | None
    note: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"kvpress:{self.name}"


PRESSES: dict[str, Press] = {
    p.name: p
    for p in (
        Press("streaming", "StreamingLLMPress", "streaming", "streaming", "same rule: 4 sinks + most recent"),
        Press(
            "knorm",
            "KnormPress",
            "knorm",
            "knorm",
            "same rule, -||k||; exact ties are broken differently (a repeated token's keys have equal norms in "
            "layer 0, as RoPE keeps norms: tokensieve keeps the later token, kvpress's torch.topk any of them)",
        ),
        Press(
            "snapkv",
            "SnapKVPress",
            "snapkv:window=64:kernel=5:pooling=avg",
            "snapkv",
            "matched at window 64, kernel 5, average pooling (tokensieve's defaults are 32 / 7 / max); kvpress pools "
            "over the keys before the window only, so the 2 keys next to the window may differ",
        ),
        Press(
            "tova",
            "TOVAPress",
            "tova:window=1",
            "tova",
            "matched with window=1: kvpress always keeps the last token, tokensieve's default protects none",
        ),
        Press(
            "observed_attention",
            "ObservedAttentionPress",
            "ems:alpha=1:merge=false",
            "h2o",
            "kvpress averages each key's attention over the queries that see it (needs eager attention, a full "
            "T x T matrix); that is EMS's global score, evicting only (ems:alpha=1:merge=false). H2O sums "
            "instead (favouring early keys) and "
            "keeps a recent half",
        ),
        Press(
            "pyramidkv",
            "PyramidKVPress",
            "snapkv:window=64:kernel=5:pooling=avg",
            "snapkv:window=64:kernel=5:pooling=avg@pyramid",
            "kvpress uses uniform budgets unless keep x T / 20 >= 64 (T >= 5120 at keep 0.25), so at keep 0.25 and "
            "0.1 here it computes exactly its SnapKV (the matched spec is therefore uniform SnapKV); where its "
            "pyramid does slope (keep 0.5), decoding fails on layers of different lengths (an error cell). "
            "tokensieve's pyramid (the nominal spec) slopes at every keep and decodes, each layer keeping its own mask",
        ),
        Press(
            "expected_attention",
            "ExpectedAttentionPress",
            None,
            "expected_attention",
            "the same idea (a Gaussian model of future queries, times ||v||); kvpress protects 4 sinks and uses "
            "the full covariance, tokensieve's statistics and windows are its own (docs/unseen.md)",
        ),
        Press(
            "kvzip",
            "KVzipPress",
            None,
            "kvzip",
            "the same idea (context reconstruction, a global top-k over every layer and head); kvpress reconstructs "
            "in chunks of 2048 with its own prompt and protects 4 sinks, tokensieve in chunks of 512",
        ),
        Press("keydiff", "KeyDiffPress", None, "keydiff", "the same rule (-cos to the mean key), ties differ"),
        Press(
            "lagkv",
            "LagKVPress",
            None,
            "lagkv",
            "the same idea (lag-relative min/max statistics per 128-token chunk); kvpress protects 4 sinks",
        ),
    )
}


def parse_presses(text: str | None) -> list[Press]:
    if not text or text == "all":
        return list(PRESSES.values())
    out = []
    for name in (p.strip() for p in text.split(",") if p.strip()):
        if name not in PRESSES:
            raise UnknownMethodError(f"unknown kvpress press {name!r}; choose from {', '.join(PRESSES)}")
        out.append(PRESSES[name])
    return out
