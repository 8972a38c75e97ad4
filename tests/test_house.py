"""The house's structure, type-only imports included: no import circle between tokensieve's modules, no import
up across a layer of the `house`, `kv` and `core` contracts, and kv's cache layers satisfy the core's protocol.

``lint-imports`` checks the layers but skips imports under ``TYPE_CHECKING`` (``exclude_type_checking_imports``):
these tests build the same graph with them included, so a type-only import cannot hide a circle.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
import torch

from conftest import make_model
from tokensieve.core.observe.protocol import ObservedCache, ObservedLayer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("tokensieve", include_external_packages=False, exclude_type_checking_imports=False)


def _loops(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every import a -> b such that b leads back to a, as the loop a -> ... -> a (grimp's shortest chain)."""
    loops, seen = [], set()
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and frozenset(back) not in seen:
                seen.add(frozenset(back))
                loops.append([importer, *back])
    return loops


def test_no_import_circle_type_only_imports_included(graph: grimp.ImportGraph) -> None:
    loops = _loops(graph)
    assert not loops, "import circles (type-only imports included):\n" + "\n".join(" -> ".join(lp) for lp in loops)


def _layer_contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return [c for c in config["contracts"] if c["type"] == "layers"]


@pytest.mark.parametrize("contract", _layer_contracts(), ids=lambda c: c["id"])
def test_no_import_up_a_layer_type_only_imports_included(graph: grimp.ImportGraph, contract: dict) -> None:
    # the contract's own layers, read from pyproject.toml: `a | b` are independent siblings, `a : b` are not
    layers = []
    for layer in contract["layers"]:
        independent = ":" not in layer
        names = [n.strip() for n in layer.replace(":", "|").split("|")]
        layers.append(grimp.Layer(*names, independent=independent))
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers, containers=set(contract.get("containers", [])))
    routes = sorted(
        " -> ".join(chain)
        for dep in illegal
        for route in dep.routes
        for chain in [[*route.heads, *route.middle, *route.tails]]
    )
    assert not illegal, f"{contract['name']}: imports up a layer (type-only included):\n" + "\n".join(routes)


def test_circles_script_counts_zero() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "circles.py")], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip().endswith(": 0"), run.stdout


def _observed_layers() -> list:
    from tokensieve.kv.cache import SieveLayer
    from tokensieve.kv.cache.biased import BiasedLayer
    from tokensieve.kv.cache.quantized import MixedLayer
    from tokensieve.kv.cache.ragged import RaggedLayer
    from tokensieve.kv.prune.layer import PrunedLayer

    return [
        SieveLayer(0),
        MixedLayer(1),
        RaggedLayer(2, batch=1, n_kv_heads=2),
        PrunedLayer(3),
        BiasedLayer(4, decide=lambda *a: None),
    ]


@pytest.mark.parametrize("layer", _observed_layers(), ids=lambda x: type(x).__name__)
def test_kv_cache_layers_satisfy_the_core_protocol(layer) -> None:
    assert isinstance(layer, ObservedLayer)
    assert isinstance(layer.needs_tokensieve_attention, bool)
    key = torch.zeros(1, 2, 3, 4)
    assert layer.owns(key) is False  # keys it never returned are not its attention call


def test_every_kv_layer_class_has_the_protocol_members() -> None:
    from tokensieve.kv.cache import SieveLayer

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for name in ("evicting", "sparse", "prune"):  # the decode-time layouts become subclasses on import
        importlib.import_module(f"tokensieve.kv.{name}.layer")

    members = ("owns", "attend", "needs_tokensieve_attention")
    for cls in subclasses(SieveLayer):
        missing = [m for m in members if not hasattr(cls, m)]
        assert not missing, f"{cls.__name__} lacks {missing}"


def test_sieve_cache_satisfies_the_core_protocol() -> None:
    from tokensieve.kv.cache import CompressibleCache as SieveCache

    config = make_model("llama").config
    cache = SieveCache(config)
    assert isinstance(cache, ObservedCache)
    assert len(cache.sieve_layers) == config.num_hidden_layers
    assert all(isinstance(layer, ObservedLayer) for layer in cache.sieve_layers)
    assert isinstance(cache.fork(), ObservedCache)


def test_one_attention_observers_are_per_thread_and_the_newest_runs() -> None:
    """The one registered attention hands a call with no bound cache layer to this thread's newest observer."""
    import threading

    from tokensieve.core.observe import hooks

    q = k = v = torch.zeros(1, 1, 2, 4)
    calls: list[str] = []

    def observer(name: str):
        def attend(module, query, key, value, mask, **kw):
            calls.append(name)
            return hooks.sdpa(module, query, key, value, mask, **kw)

        return attend

    module = torch.nn.Module()
    module.is_causal = True
    plain = hooks.sieve_attention(module, q, k, v, None)[0]
    with hooks.observing("vision", observer("vision")):
        with hooks.observing("train", observer("train")):
            hooks.sieve_attention(module, q, k, v, None)
            seen: list = []
            other = threading.Thread(target=lambda: seen.append(hooks.observer("train")))
            other.start()
            other.join()
        out = hooks.sieve_attention(module, q, k, v, None)[0]
    hooks.sieve_attention(module, q, k, v, None)
    assert calls == ["train", "vision"] and seen == [None]  # newest first, the inner one gone after its block
    assert hooks.observer("vision") is None and torch.equal(out, plain)


def test_train_and_kv_switch_to_the_same_registered_attention() -> None:
    import tokensieve as ts
    from conftest import make_model
    from tokensieve.core.observe import hooks
    from tokensieve.train.attention import prompt_attention

    model = make_model("llama")
    with prompt_attention(model, torch.tensor([2]), layer=1):
        during = model.config._attn_implementation
        model(input_ids=torch.randint(3, 100, (1, 6)))
    assert during == hooks.ATTENTION and model.config._attn_implementation == "sdpa"
    assert ts.prepare(model).config._attn_implementation == hooks.ATTENTION
