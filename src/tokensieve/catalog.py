"""Every method tokensieve implements, across families, for ``tokensieve methods``: generated from the
registered families (``registry.families()``); importing the family packages below is the only list."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from tokensieve.registry import families

# the packages that register a family, in the order `tokensieve methods` lists them: prefill eviction (marked
# when it also evicts while generating), sparse decoding, prefill pruning; the budget allocators, which compose
# with every score; then the other consumers' families: attribution methods, training rules, weight
# quantization, the vision methods (patch tokens inside a ViT) and the vision-language ones (image tokens of a
# LLaVA-style model). tests/test_families.py checks that every `register_family` call is in a package listed here.
FAMILY_PACKAGES = (
    "tokensieve.kv.methods",
    "tokensieve.kv.sparse",
    "tokensieve.kv.prune",
    "tokensieve.kv.budget",
    "tokensieve.explain.methods",
    "tokensieve.train.methods",
    "tokensieve.quantize.methods",
    "tokensieve.vision.methods",
    "tokensieve.vlm.methods",
)


def describe_all() -> list[dict[str, Any]]:
    """One row per method id, family by family in ``FAMILY_PACKAGES`` order (a family registered from a package
    not listed there comes last), each family's members in its registry's order."""
    for package in FAMILY_PACKAGES:
        import_module(package)  # registers its family
    order = {package: i for i, package in enumerate(FAMILY_PACKAGES)}
    listed = sorted(families(), key=lambda f: order.get(f.package, len(order)))  # stable: registration order ties
    return [row for family in listed for row in family.rows()]
