"""Every method tokensieve implements, across families, for ``tokensieve methods``."""

from __future__ import annotations

from typing import Any


def describe_all() -> list[dict[str, Any]]:
    """One row per method id: prefill eviction (marked when it also evicts while generating), sparse
    decoding, prefill pruning; the budget allocators, which compose with every score; then the other
    consumers' families: attribution methods, training rules, weight quantization, the vision methods (patch
    tokens inside a ViT) and the vision-language ones (image tokens of a LLaVA-style model)."""
    from tokensieve.explain import EXPLAINERS
    from tokensieve.kv import ALLOCATORS, DECODE_RULES, PRUNERS, REGISTRY, SPARSE
    from tokensieve.quantize.methods import REGISTRY as QUANT
    from tokensieve.train import RULES
    from tokensieve.vision.methods import VISION_METHODS
    from tokensieve.vlm import VLM_METHODS

    rows = []
    for cls in REGISTRY.values():
        row = cls().describe()
        if cls.id in DECODE_RULES:
            row["kind"] = f"{row['kind']} + decode eviction"
        rows.append(row)
    rows += [cls().describe() for cls in SPARSE.values()]
    rows += [cls().describe() for cls in PRUNERS.values()]
    rows += [cls().describe() for cls in ALLOCATORS.values()]
    rows += [cls().describe() for cls in EXPLAINERS.values() if cls.kind == "attribution"]  # `tokensieve explain`
    rows += [cls().describe() for cls in RULES.values()]  # `tokensieve train`
    rows += [q.describe() for q in QUANT.values()]  # `tokensieve quantize`
    rows += [cls().describe() for cls in VISION_METHODS.values()]  # `tokensieve vision`
    rows += [cls().describe() for cls in VLM_METHODS.values()]  # `tokensieve.vlm.sieve`
    return rows
