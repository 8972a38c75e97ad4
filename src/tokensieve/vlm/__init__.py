"""Vision-language tokens: prune a LLaVA-style model's image tokens before its LLM or inside it (docs/vision.md).

with tokensieve.vlm.sieve(model, "fastv", keep=0.5) as s:   # hooks live only inside this block
    out = model.generate(**inputs, max_new_tokens=32)
s.counts                                                    # image tokens in, before the LLM, after layer K

Built against transformers' LLaVA classes and tested on tiny random models only: no vision-language model
ships weights offline here, so the quality of these methods is not measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from tokensieve.vlm.base import Inputs, VlmMethod, relevance
from tokensieve.vlm.engine import VlmSieve
from tokensieve.vlm.methods import VLM_METHODS, get_vlm_method


@contextmanager
def sieve(model: nn.Module, method: str | VlmMethod = "fastv", **params: Any) -> Iterator[VlmSieve]:
    """Prune ``model``'s image tokens by ``method`` in every forward (and ``generate``) inside the block."""
    with VlmSieve(model, get_vlm_method(method, **params)) as s:
        yield s


__all__ = ["VLM_METHODS", "Inputs", "VlmMethod", "VlmSieve", "get_vlm_method", "relevance", "sieve"]
