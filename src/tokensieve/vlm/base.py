"""What a vision-language pruning method is: which image tokens go before the LLM, and/or at a layer inside it.

A method is a small dataclass of policy; ``engine.py`` does the work. ``before_llm`` sees the projected image
tokens and the text tokens as they enter the LLM (``Inputs``) and returns the image tokens to keep; ``late``
names a decoder layer ``K`` and how many of the image tokens still there survive it, ranked by the attention
the chosen query rows (``rows``: the last token, or every text token after the image) pay them at layer K-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from tokensieve.errors import check_keep
from tokensieve.registry import Registered


@dataclass
class Inputs:
    image: Tensor  # [B, N, D] the projected image tokens, as they enter the LLM
    text: Tensor  # [B, M, D] the prompt's text-token embeddings (padding included, see ``text_valid``)
    text_valid: Tensor  # [B, M] bool: False for padding


@dataclass
class VlmMethod(Registered):
    """``keep``: the fraction of the image tokens kept (by the method's one stage, or its first)."""

    kind: ClassVar[str] = "vision-language tokens (VLM)"
    rows: ClassVar[str] = "last"  # whose attention ranks image tokens at a layer: "last" token or "text" after

    keep: float = 0.5

    def __post_init__(self) -> None:
        check_keep(self.keep)

    def n_keep(self, n: int, keep: float | None = None) -> int:
        return max(1, math.ceil((self.keep if keep is None else keep) * n - 1e-9))

    def before_llm(self, inputs: Inputs) -> Tensor | None:
        """[B, k] indices of the image tokens to keep before the LLM (None: keep all)."""
        return None

    def late(self, n_layers: int) -> tuple[int, float] | None:
        """(layer K, fraction of the image tokens present there to keep) for a cut inside the LLM, or None."""
        return None


def relevance(inputs: Inputs) -> Tensor:
    """[B, N]: each image token's best cosine similarity to a (non-padding) text token. Choice: max, not
    mean, so a token matching one word of the question counts even when the prompt template dominates."""
    img, txt = F.normalize(inputs.image.float(), dim=-1), F.normalize(inputs.text.float(), dim=-1)
    sim = img @ txt.transpose(1, 2)  # [B, N, M]: image x text, small
    sim = sim.masked_fill(~inputs.text_valid[:, None, :], -2.0)
    return sim.max(-1).values


def cosine(image: Tensor) -> Tensor:
    """[B, N, N] cosine similarity among the image tokens (N is a few hundred: small)."""
    u = F.normalize(image.float(), dim=-1)
    return u @ u.transpose(1, 2)
