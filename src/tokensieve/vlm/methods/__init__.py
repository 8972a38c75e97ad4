"""Vision-language pruning methods by id: one small file each, one entry here."""

from __future__ import annotations

from typing import Any

from tokensieve.registry import instantiate, register_family
from tokensieve.vlm.base import VlmMethod
from tokensieve.vlm.methods.fastv import FastV
from tokensieve.vlm.methods.idpruner import IDPruner
from tokensieve.vlm.methods.mmtok import MMTok
from tokensieve.vlm.methods.todre import ToDRE

VLM_METHODS: dict[str, type[VlmMethod]] = {cls.id: cls for cls in (FastV, ToDRE, IDPruner, MMTok)}
register_family("vision-language method", VLM_METHODS, "a vision-language method: use tokensieve.vlm.sieve", __name__)


def get_vlm_method(method: str | VlmMethod, **params: Any) -> VlmMethod:
    return instantiate(VLM_METHODS, VlmMethod, "vision-language method", method, params)


__all__ = ["VLM_METHODS", "FastV", "IDPruner", "MMTok", "ToDRE", "get_vlm_method"]
