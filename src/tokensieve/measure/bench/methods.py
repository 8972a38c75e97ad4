"""What the benchmark sweeps: tokensieve method specs and the kvpress presses they correspond to.

A method spec is ``id[:param=value...][@allocator]``, e.g. ``snapkv``, ``snapkv:window=64:kernel=5``,
``snapkv@pyramid``. A sparse-decoding id (``quest``, ``tidal``, ...) is swept too: it keeps the whole
prefilled cache and its ``keep`` is the fraction of the cache read per decode step. The default sweep is
every registered method whose kind is prefill eviction, so methods added to the registry are benchmarked
without touching this file. ``block:base=keydiff:size=128`` (chunked prefill) is swept when named: each of its
cells prefills the sample's context block by block itself (``own_prefill``).
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
            if spec.sparse or spec.modifier or spec.own_prefill:
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
    def own_prefill(self) -> bool:
        """It prefills the context its own way (``block``: block by block under the budget), so each of its cells
        runs its own prefill of the sample's context, at every keep, instead of sharing the sample's prefill."""
        cls = REGISTRY.get(self.id)
        return cls is not None and cls.own_prefill

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


SNAP = "snapkv/window=64/kernel=5/pooling=avg"  # kvpress's SnapKV as a wrapper's base

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
            "kvpress slopes only where its top layer's budget (keep x T / 20, or 2 keep x T - (T - 64) once the "
            "bottom layer is capped at T - 64) is at least its 64-token window: at keep 0.25 and 0.1 below T = 5120 "
            "it computes exactly its SnapKV (the matched spec is therefore uniform SnapKV); at keep 0.5 on a short "
            "context it slopes (136 / 100 / 65 of 200 tokens over 3 layers: nested sets, overlap 0.79) and decoding "
            "fails on layers of different lengths (an error cell). tokensieve's pyramid (the nominal spec) slopes "
            "at every keep and decodes, each layer keeping its own mask",
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
        Press(
            "leverage",
            "LeverageScorePress",
            "leverage",
            "leverage",
            "same rule (pre-RoPE keys, centred, x a 48-column Gaussian sketch, leverage); the sketches are drawn "
            "apart, so the scores agree exactly only where the head dim is <= 48 (the sketch keeps the column space)",
        ),
        Press(
            "non_causal_attn",
            "NonCausalAttnPress",
            "non_causal_attn",
            "non_causal_attn",
            "same rule (bidirectional attention in chunks of 256, GQA mean, x ||v||, smoothed over 3); kvpress "
            "z-scores it (rank unchanged)",
        ),
        Press("compactor", "CompactorPress", "compactor", "compactor", "same rule (r x leverage + attention)"),
        Press("cur", "CURPress", "cur", "cur", "same rule (||k||^2 ||v||^2 as shares of 16-token windows, 4 sinks)"),
        Press(
            "cap",
            "CapPress",
            "cap:queries=1000000",
            "cap",
            "same rule with the anchor over every context query past the sinks (queries >= the context); tokensieve's "
            "default averages the last 32 queries only (a bounded observation window)",
        ),
        Press(
            "kvgrad",
            "KVgradPress",
            "kvgrad:chunk=512",
            "kvgrad",
            "the same score; kvpress takes each chunk's softmax over sinks + that chunk + the replay only and counts "
            "the prompt's tokens as probes (kvgrad's docstring)",
        ),
        Press(
            "kvcompose",
            "KVComposePress",
            "kvcompose:group=mean:head_mean=true",
            "kvcompose",
            "same rule with kvpress's defaults (the GQA group's per-head maxima averaged, each layer's head-mean "
            "score added to every head); tokensieve's default takes the group's max, as kvzip. kvpress cannot "
            "decode its layers of different lengths (an error cell)",
        ),
        Press(
            "simlayerkv",
            "SimLayerKVPress",
            "simlayerkv:tau=0.9",
            "simlayerkv",
            "same rule at tau 0.9 (kvpress's lazy_threshold; its default 1.0 never marks a layer lazy); the share "
            "kept is an output",
            {"lazy_threshold": 0.9},
        ),
        Press(
            "critical_kv",
            "CriticalKVPress",
            f"critical_kv:base={SNAP}:eps=0.0001",
            "critical_kv",
            "same rule over the matched SnapKV (half the budget by the score, the rest by (s + eps) ||v W_O||_1)",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "critical_adakv",
            "CriticalAdaKVPress",
            f"critical_adakv:base={SNAP}:eps=0.0001",
            "critical_adakv",
            "same rule after AdaKV's per-head budgets, over the matched SnapKV",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "adakv",
            "AdaKVPress",
            "snapkv:window=64:kernel=5:pooling=avg@adakv",
            "snapkv@adakv",
            "same rule (one top-k over the layer's heads, floor 0.2 of the budget per head) over the matched SnapKV; "
            "kvpress masks the evicted keys, tokensieve frees them (ragged layout)",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "chunk",
            "ChunkPress",
            f"chunk:base={SNAP}",
            "chunk:base=snapkv",
            "same rule (each chunk of 1024 keeps the same share) over the matched SnapKV",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "chunkkv",
            "ChunkKVPress",
            f"entropy_chunk:base={SNAP}:size=20:gate=0",
            "entropy_chunk",
            "whole chunks of 20 by mean score: entropy_chunk with its gate off (gate=0); kvpress chooses once for "
            "all heads and ranks the window inside the chunks, ours per head with the window kept apart",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "entropy_chunk",
            "EntropyGatedChunkKVPress",
            f"entropy_chunk:base={SNAP}",
            "entropy_chunk",
            "same rule (chunks of 10, a spiky chunk gives its top 4) over the matched SnapKV; kvpress chooses once "
            "for all heads and ranks the window inside the chunks, ours per head with the window kept apart",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "rerotate",
            "KeyRerotationPress",
            f"rerotate:base={SNAP}",
            "rerotate:base=keydiff",
            "same rule (kept keys re-rotated to 0 .. n-1) over the matched SnapKV",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "merging",
            "MergingPress",
            f"merging:base={SNAP}",
            "merging",
            "the same idea (evicted values fold into similar kept ones); the weights differ (docs/kv-breadth.md)",
            {"press": {"press": "SnapKVPress"}},
        ),
        Press(
            "finch",
            "FinchPress",
            None,
            "finch",
            "question seen by kvpress (it splits the prompt at a delimiter its pipeline inserts before the "
            "question); tokensieve's finch is question unseen (its window is the context's tail)",
        ),
        Press("random", "RandomPress", None, "random", "the same rule; the draws differ"),
        Press(
            "block",
            "BlockPress",
            None,
            "block:base=keydiff:size=128",
            "the same idea over KeyDiff in blocks of 128; kvpress runs the full prefill first and scores its keys "
            "block by block (the first n_kept tokens, then blocks of 128), ours prefills block by block (later layers "
            "see only the held tokens; the first block takes the context's remainder), so the caches differ by design",
            {"press": {"press": "KeyDiffPress"}, "block_size": 128},
        ),
    )
}

# kvpress's presses with no cell in `--compare kvpress`, and why (docs/kv-breadth.md has the whole map)
NOT_RUN: dict[str, str] = {
    "KVzapPress": "its regressors are downloaded from the hub (tokensieve trains kvzap here: calibrate --learned)",
    "FastKVzipPress": "its gates are downloaded from the hub (tokensieve trains fastkvzip here)",
    "QFilterPress": "its filters are downloaded from the hub (tokensieve calibrates qfilter here)",
    "ExpectedAttentionStatsPress": "its statistics are downloaded from the hub or computed on a downloaded dataset",
    "DuoAttentionPress": "its head patterns are downloaded (or scored on-the-fly on a downloaded dataset)",
    "LUKVPress": "its budget curves are downloaded (tokensieve's lukv calibrates them here)",
    "RestoreKVPress": "its restore embeddings and LoRA are downloaded (restorekv is not registered here)",
    "ThinKPress": "channel pruning alone keeps every token (no keep axis); tokensieve's think needs a token base",
    "DMSPress": "the share kept is an output of its threshold on raw scores (no keep axis)",
    "PerLayerCompressionPress": "a keep per layer: the per_layer allocator, which the bench does not sweep",
    "DecodingPress": "decode time (tokensieve decode / DecodeCache), not a prefill cell",
    "CompressionRatioDecodingPress": "decode time (ratio_decoding in DecodeCache), not a prefill cell",
    "CAMPress": "decode time in kvpress; tokensieve's cam merges once at the prefill's compression",
    "PrefillDecodingPress": "a prefill press plus a decode press: no single cell",
    "ComposedPress": "a chain of presses: no single cell",
    "BasePress": "an abstract base",
    "ScorerPress": "an abstract base",
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
