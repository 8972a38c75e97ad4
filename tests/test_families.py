"""The family contract (ARCHITECTURE.md, "How to add a method"): every registered family's members are
``Registered`` subclasses that say what they are, each in its own ``<family>/methods/<id>.py`` (or the family
package's ``<id>.py``); every family is registered from a package the catalog imports, so
``tokensieve methods`` lists it; every subcommand parses ``--param`` with the one parser."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import tokensieve
from tokensieve.catalog import FAMILY_PACKAGES, describe_all
from tokensieve.cli import main
from tokensieve.registry import Registered, families

SRC = Path(tokensieve.__file__).resolve().parent


@pytest.fixture(scope="module")
def registered():
    describe_all()  # imports every family package
    return families()


def _generated_kv_score(cls: type) -> bool:
    # explain's KV scorers are made from the KV methods (one class per score-only method, kvscore.py)
    from tokensieve.explain import KVScore

    return issubclass(cls, KVScore) and cls is not KVScore


def test_every_family_is_registered_from_a_catalogued_package(registered):
    calls = {}  # module -> the family names its register_family calls give
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_family":
                rel = path.relative_to(SRC.parent).with_suffix("")
                module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
                calls.setdefault(module, []).append(node.args[0].value)
                assert len(node.args) >= 4 and getattr(node.args[3], "id", None) == "__name__", module
    assert calls.pop("tokensieve.registry", None) is None  # the registry registers nothing itself
    assert set(calls) == set(FAMILY_PACKAGES)
    assert {f.name for f in registered} == {name for names in calls.values() for name in names}
    assert all(f.package in FAMILY_PACKAGES for f in registered)


def test_every_member_is_registered_and_lives_in_its_own_file(registered):
    for family in registered:
        assert family.registry, family.name
        for mid, cls in family.registry.items():
            assert isinstance(cls, type) and issubclass(cls, Registered), (family.name, mid)
            assert cls.id == mid and cls.paper and cls.rule and cls.kind, (family.name, mid)
            if _generated_kv_score(cls):
                continue
            assert cls.__module__ == f"{family.package}.{mid.replace('+', '_plus')}", (family.name, mid)
            assert (SRC.parent / (cls.__module__.replace(".", "/") + ".py")).is_file()


def test_methods_lists_every_family_in_catalog_order(registered, capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    order = {p: i for i, p in enumerate(FAMILY_PACKAGES)}
    want = []
    for family in sorted(registered, key=lambda f: order[f.package]):
        want += [mid for mid, cls in family.registry.items() if not _generated_kv_score(cls)]
    assert [r["id"] for r in rows] == want
    assert all(set(r) == {"id", "kind", "paper", "rule", "defaults"} for r in rows)


def test_a_family_registered_later_is_listed(registered):
    from dataclasses import dataclass

    from tokensieve.registry import _FAMILIES, register_family

    @dataclass
    class Throwaway(Registered):
        id = "throwaway"
        paper = "none"
        rule = "none"
        kind = "scratch family"

    try:
        register_family("scratch family", {"throwaway": Throwaway}, "scratch", "tests.scratch")
        rows = describe_all()
        assert rows[-1]["id"] == "throwaway" and rows[-1]["kind"] == "scratch family"  # unlisted packages: last
    finally:
        _FAMILIES.pop("scratch family")


def _bad_param_argv(tmp_path: Path) -> dict[str, list[str]]:
    ctx = tmp_path / "c.txt"
    ctx.write_text("The pass key is 123.")
    image = tmp_path / "missing.png"  # never read: the parameters fail first
    return {
        "generate": ["generate", "--method", "snapkv", "--keep", "0.5", "--context", "x", "--question", "q?"],
        "decode": ["decode", "--method", "h2o", "--budget", "8", "--context", "x", "--question", "q?"],
        "explain": ["explain", "--context-file", str(ctx), "--question", "q"],
        "train": ["train", "--method", "excess_loss", "--steps", "2", "--out", str(tmp_path / "out")],
        "vision": ["vision", "--method", "cls", "--keep", "0.5", "--image", str(image)],
    }


@pytest.mark.parametrize("command", ["generate", "decode", "explain", "train", "vision"])
def test_every_subcommand_parses_param_with_the_one_parser(command, tmp_path, capsys):
    argv = _bad_param_argv(tmp_path)[command]
    assert main([*argv, "--param", "window"]) == 2
    err = capsys.readouterr().err.strip()
    scoped = command == "explain"  # several methods at once: each parameter names its method
    form, example = ("METHOD.NAME=VALUE", "reagent.max_steps=50") if scoped else ("NAME=VALUE", "window=64")
    assert err == f"tokensieve: error: --param 'window' must look like {form}, e.g. --param {example}"


def test_allocator_param_uses_the_same_parser(capsys):
    argv = ["generate", "--method", "snapkv", "--keep", "0.5", "--context", "x", "--question", "q?"]
    assert main([*argv, "--allocator", "zipvl", "--allocator-param", "tau"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "tokensieve: error: --allocator-param 'tau' must look like NAME=VALUE, e.g. --allocator-param tau=0.9"
    )


def test_param_values_are_read_as_json_else_text():
    from tokensieve.spec import parse_params

    got = parse_params(["window=64", "keep=[0.7,0.5]", "pooling=avg", "flag=true", "x=a=b"])
    assert got == {"window": 64, "keep": [0.7, 0.5], "pooling": "avg", "flag": True, "x": "a=b"}
    assert parse_params(["reagent.max_steps=5"], scoped=True) == {"reagent": {"max_steps": 5}}
    assert parse_params(None) == {}
