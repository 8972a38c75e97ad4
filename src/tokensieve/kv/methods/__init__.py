"""Method registry: one small file per method, one entry here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokensieve.kv.methods.a2sf import A2SF
from tokensieve.kv.methods.act import ACT
from tokensieve.kv.methods.base import REGISTRY, Method, get_method
from tokensieve.kv.methods.block import Block
from tokensieve.kv.methods.cam import CaM
from tokensieve.kv.methods.cap import Cap
from tokensieve.kv.methods.chunk import Chunk
from tokensieve.kv.methods.compactor import Compactor
from tokensieve.kv.methods.compresskv import CompressKV
from tokensieve.kv.methods.critical_adakv import CriticalAdaKV
from tokensieve.kv.methods.critical_kv import CriticalKV
from tokensieve.kv.methods.cur import CUR
from tokensieve.kv.methods.decode_rule import DecodeRule
from tokensieve.kv.methods.dms import DMS
from tokensieve.kv.methods.duo_attention import DuoAttention
from tokensieve.kv.methods.ems import EMS
from tokensieve.kv.methods.entropy_chunk import EntropyChunk
from tokensieve.kv.methods.expected_attention import ExpectedAttention
from tokensieve.kv.methods.expected_attention_stats import ExpectedAttentionStats
from tokensieve.kv.methods.fastkvzip import FastKVzip
from tokensieve.kv.methods.finch import FINCH
from tokensieve.kv.methods.gui_kv import GUIKV
from tokensieve.kv.methods.h2o import H2O
from tokensieve.kv.methods.keydiff import KeyDiff
from tokensieve.kv.methods.keyformer import Keyformer
from tokensieve.kv.methods.knorm import KNorm
from tokensieve.kv.methods.kvcompose import KVCompose
from tokensieve.kv.methods.kvgrad import KVgrad
from tokensieve.kv.methods.kvzap import KVzap
from tokensieve.kv.methods.kvzip import KVzip
from tokensieve.kv.methods.kvzip_plus import KVzipPlus
from tokensieve.kv.methods.lagkv import LagKV
from tokensieve.kv.methods.leverage import Leverage
from tokensieve.kv.methods.merging import Merging
from tokensieve.kv.methods.mikv import MiKV
from tokensieve.kv.methods.non_causal_attn import NonCausalAttn
from tokensieve.kv.methods.qfilter import QFilter
from tokensieve.kv.methods.random import Random
from tokensieve.kv.methods.ratio_decoding import RatioDecoding
from tokensieve.kv.methods.razor import Razor
from tokensieve.kv.methods.rerotate import Rerotate
from tokensieve.kv.methods.scissorhands import Scissorhands
from tokensieve.kv.methods.simlayerkv import SimLayerKV
from tokensieve.kv.methods.snapkv import SnapKV
from tokensieve.kv.methods.span import Span
from tokensieve.kv.methods.streaming import Streaming
from tokensieve.kv.methods.surprise import Surprise
from tokensieve.kv.methods.think import ThinK
from tokensieve.kv.methods.tova import TOVA
from tokensieve.kv.methods.zerotuning import ZeroTuning
from tokensieve.kv.methods.zipcache import ZipCache
from tokensieve.kv.methods.zipcache_quant import ZipCacheQuant
from tokensieve.registry import register_family


def _listing(cls: type[Method]) -> dict[str, Any]:
    """A method's ``tokensieve methods`` row, its kind marked when it also evicts while generating."""
    row = cls().describe()
    if cls.id in DECODE_RULES:
        row["kind"] = f"{row['kind']} + decode eviction"
    return row


REGISTRY.update(
    {cls.id: cls for cls in (Streaming, H2O, Scissorhands, A2SF, Keyformer, SnapKV, TOVA, KNorm, ZipCache, EMS, Random)}
)
register_family(
    "prefill eviction",
    REGISTRY,
    "a prefill method: use tokensieve.compress / Compressed, or DecodeCache for decode eviction",
    __name__,
    _listing,
)
# keeping evicted information at low cost (the head-adaptive issue)
REGISTRY.update({cls.id: cls for cls in (MiKV, ZipCacheQuant, Razor, CompressKV, ACT, ZeroTuning)})
# question-unseen compression (issue 12)
REGISTRY.update({cls.id: cls for cls in (KVzip, KVzipPlus, ExpectedAttention, KeyDiff, LagKV, Surprise, Span)})
# issue 28 (breadth): training-free scores and the catalog's gui_kv
REGISTRY.update(
    {
        cls.id: cls
        for cls in (Leverage, NonCausalAttn, Compactor, CUR, Cap, SimLayerKV, FINCH, KVgrad, KVCompose, GUIKV)
    }
)
# issue 28 (breadth): wrappers and budget rules over any score
REGISTRY.update({cls.id: cls for cls in (DMS, CriticalKV, CriticalAdaKV, Chunk, EntropyChunk, Merging, ThinK)})
# issue 28 (breadth 2): key re-rotation, a decode-time share, cache merging, calibrated filters
REGISTRY.update({cls.id: cls for cls in (Rerotate, RatioDecoding, CaM, QFilter)})
# issue 28 (learned): scorers trained here on the project's offline corpora (kv/learn.py)
REGISTRY.update({cls.id: cls for cls in (KVzap, FastKVzip, DuoAttention, ExpectedAttentionStats)})
# issue 28 (item 5): true chunked prefill under a budget, as a method id (kv/blockwise.py runs it)
REGISTRY[Block.id] = Block

# what `tokensieve generate` and the demo use unless told: the measured best question-unseen method
# (docs/unseen.md, benchmarks/unseen/results/summary)
DEFAULT_METHOD = "kvzip"

# the methods that also evict while generating: method id -> its ``decode_rule`` (the rule lives in its file)
DECODE_RULES: dict[str, Callable[[Any], DecodeRule]] = {
    cls.id: cls.decode_rule for cls in (H2O, A2SF, Scissorhands, TOVA, Keyformer, DMS, RatioDecoding)
}


def method_ids() -> list[str]:
    return list(REGISTRY)


__all__ = ["DECODE_RULES", "DEFAULT_METHOD", "REGISTRY", "Method", "get_method", "method_ids"]
