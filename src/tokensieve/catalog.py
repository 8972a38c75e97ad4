"""Every method tokensieve implements, across families, for ``tokensieve methods``."""

from __future__ import annotations

from typing import Any


def describe_all() -> list[dict[str, Any]]:
    """One row per method id: prefill eviction (marked when it also evicts while generating), sparse
    decoding, prefill pruning; the budget allocators, which compose with every score; then the other
    consumers' families (explanations, training rules, weight quantization)."""
    from tokensieve.explain import EXPLAINERS
    from tokensieve.kv.budget import ALLOCATORS
    from tokensieve.kv.evicting import DECODE_RULES
    from tokensieve.kv.methods import REGISTRY
    from tokensieve.kv.prune import PRUNERS
    from tokensieve.kv.sparse import SPARSE
    from tokensieve.quantize.methods import REGISTRY as QUANT
    from tokensieve.train import RULES

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
    return rows
