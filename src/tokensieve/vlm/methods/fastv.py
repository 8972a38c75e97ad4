from __future__ import annotations

from dataclasses import dataclass

from tokensieve.errors import InvalidKeepError
from tokensieve.vlm.base import VlmMethod


@dataclass
class FastV(VlmMethod):
    """At decoder layer ``at`` (K = 2 in the paper), drop the image tokens that received the least attention
    from the last prompt token at layer K-1 (mean over heads); layers before K see every token, K and later
    only the kept ones (their KV cache is shorter too). Kept tokens keep their original positions."""

    id = "fastv"
    paper = "An Image is Worth 1/2 Tokens After Layer 2 (FastV, Chen et al., ECCV 2024)"
    rule = "at LLM layer K, keep the image tokens with the most last-token attention at layer K-1"

    at: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.at < 1:
            raise InvalidKeepError(f"at={self.at}: FastV ranks by layer K-1's attention, so K must be 1 or more")

    def late(self, n_layers: int) -> tuple[int, float] | None:
        return (self.at, self.keep)
