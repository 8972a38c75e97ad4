"""The KV-cache consumer's public face: what the layers above (measure, explain, quantize, the demo, the catalog,
the CLI) and benchmarks may use. Its modules are internal: outside ``tokensieve.kv``, import from here only (the
``kv-public`` import-linter contract). Every ``import tokensieve...`` already loads all of kv through
``tokensieve/__init__``, so exporting it all here costs nothing more."""

from tokensieve.kv.blockwise import compress_blocks
from tokensieve.kv.budget import ALLOCATORS, Allocator, get_allocator
from tokensieve.kv.budget.hybrid import KEYS as HYBRID_KEYS
from tokensieve.kv.budget.hybrid import Hybrid
from tokensieve.kv.cache import CompressibleCache, SieveLayer
from tokensieve.kv.cache.biased import BiasedLayer
from tokensieve.kv.cache.quantized import MixedLayer
from tokensieve.kv.cache.ragged import RaggedLayer
from tokensieve.kv.cache.window import WindowLayer
from tokensieve.kv.calibration import calibrate, calibration_path, get_calibration
from tokensieve.kv.compressed import Compressed
from tokensieve.kv.decoding import DecodeAnswer, DecodeMeter, DecodeStats, decode, decode_family
from tokensieve.kv.evicting import DECODE_RULES, DecodeCache
from tokensieve.kv.learn import FORMS_OF as LEARNED_METHODS
from tokensieve.kv.learn import train as train_learned
from tokensieve.kv.learned import load_scorer
from tokensieve.kv.methods import DEFAULT_METHOD, REGISTRY, Method, get_method, method_ids
from tokensieve.kv.observed import layer_inputs, observe_prefill
from tokensieve.kv.offline import OFFLINE_CALIBRATED, calibrate_offline
from tokensieve.kv.pages import KEYS as PAGE_KEYS
from tokensieve.kv.pages import Paging
from tokensieve.kv.pipeline import Answer, compress, generate, prefill
from tokensieve.kv.plan import Plan, SieveCache
from tokensieve.kv.prefilled import Prefill
from tokensieve.kv.prune import PRUNERS, prune
from tokensieve.kv.scoring import finite, prefill_inputs, score_prefill
from tokensieve.kv.sinks import sink_map
from tokensieve.kv.sparse import SPARSE, SparseCache, SparseMethod, get_sparse
from tokensieve.kv.stats import Stats

__all__ = [
    "ALLOCATORS",
    "DECODE_RULES",
    "DEFAULT_METHOD",
    "HYBRID_KEYS",
    "LEARNED_METHODS",
    "OFFLINE_CALIBRATED",
    "PAGE_KEYS",
    "PRUNERS",
    "REGISTRY",
    "SPARSE",
    "Allocator",
    "Answer",
    "BiasedLayer",
    "Compressed",
    "CompressibleCache",
    "DecodeAnswer",
    "DecodeCache",
    "DecodeMeter",
    "DecodeStats",
    "Hybrid",
    "Method",
    "MixedLayer",
    "Paging",
    "Plan",
    "Prefill",
    "RaggedLayer",
    "SieveCache",
    "SieveLayer",
    "SparseCache",
    "SparseMethod",
    "Stats",
    "WindowLayer",
    "calibrate",
    "calibrate_offline",
    "calibration_path",
    "compress",
    "compress_blocks",
    "decode",
    "decode_family",
    "finite",
    "generate",
    "get_allocator",
    "get_calibration",
    "get_method",
    "get_sparse",
    "layer_inputs",
    "load_scorer",
    "method_ids",
    "observe_prefill",
    "prefill",
    "prefill_inputs",
    "prune",
    "score_prefill",
    "sink_map",
    "train_learned",
]
