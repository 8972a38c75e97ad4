"""Prefill pruning: drop prompt tokens inside the prefill to cut time-to-first-token (LazyLLM, SpAtten).

model, tok = tokensieve.load_model()
with tokensieve.kv.prune(model, "lazyllm") as cache:           # hooks live only inside this block
    out = model.generate(**tok(prompt, return_tensors="pt"), **with_cache(model, cache), max_new_tokens=32)
cache.engine.alive_per_layer                               # tokens each layer computed on

A pruner (``lazyllm.py``, ``spatten.py``) is policy: where to prune, how much to keep, which attention
ranks tokens. ``engine.py`` applies it with forward pre-hooks installed for the block only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tokensieve.core.observe.hooks import prepare
from tokensieve.kv.prune.base import Pruner
from tokensieve.kv.prune.engine import PrunedCache, PruneEngine, decoder_layers
from tokensieve.kv.prune.lazyllm import LazyLLM
from tokensieve.kv.prune.spatten import SpAtten
from tokensieve.registry import instantiate, register_family

PRUNERS: dict[str, type[Pruner]] = {cls.id: cls for cls in (LazyLLM, SpAtten)}
register_family(
    "prefill pruning",
    PRUNERS,
    "a prefill-pruning method: use tokensieve.decode or tokensieve.prune",
    __name__,
)


def get_pruner(method: str | Pruner, **params: Any) -> Pruner:
    return instantiate(PRUNERS, Pruner, "prefill-pruning method", method, params)


@contextmanager
def prune(model, method: str | Pruner = "lazyllm", **params: Any) -> Iterator[PrunedCache]:
    """A cache whose first forward (the prompt) is pruned by ``method``; later forwards generate from it
    (LazyLLM revives pruned tokens the new queries need). Use the cache only inside the block."""
    pruner = get_pruner(method, **params)
    prepare(model)
    cache = PrunedCache(model)
    engine = PruneEngine(model, pruner, cache)
    pruner.stages(len(decoder_layers(model)))  # validates the schedule against the model before any work
    cache.engine = engine
    with engine:
        yield cache


__all__ = ["PRUNERS", "PruneEngine", "PrunedCache", "Pruner", "get_pruner", "prune"]
