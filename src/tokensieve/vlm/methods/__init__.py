"""Vision-language pruning methods by id: one small file each."""

from __future__ import annotations

from tokensieve.vlm.methods.fastv import FastV
from tokensieve.vlm.methods.idpruner import IDPruner
from tokensieve.vlm.methods.mmtok import MMTok
from tokensieve.vlm.methods.todre import ToDRE

__all__ = ["FastV", "IDPruner", "MMTok", "ToDRE"]
