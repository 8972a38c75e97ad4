"""Attention sinks ("When Attention Sink Emerges"): per layer and query head, the tokens whose mean attention
share is at least ``epsilon`` (0.3).

The share of token ``j`` is ``sum_i A[i, j]`` over the queries that can see it, divided by their number, and
it is accumulated over bounded query chunks while the prefill runs (``core.observe.stats``): never a T x T matrix.
Tokens seen by fewer than ``min_queries`` queries (the last few) are not candidates: a handful of queries
cannot make a sink. Full-attention layers only (sliding-window layers are left to transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokensieve.core.observe.stats import AttnSum, accumulate
from tokensieve.core.scores.attention import visible_counts


@dataclass
class Sink:
    layer: int
    head: int
    token: int
    share: float
    text: str | None = None


@dataclass
class SinkMap:
    layers: list[int]  # model layer index of each row
    share: Tensor  # [L, H, T] mean attention each token receives, per query head
    candidates: Tensor  # [T] bool: seen by enough queries
    epsilon: float
    tokens: list[str] | None = None

    def sinks(self) -> list[Sink]:
        hits = ((self.share >= self.epsilon) & self.candidates).nonzero().tolist()
        return [
            Sink(self.layers[r], h, j, float(self.share[r, h, j]), None if self.tokens is None else self.tokens[j])
            for r, h, j in hits
        ]

    def first_token_share(self) -> Tensor:
        """[L, H]: the share of the first token, the classic sink."""
        return self.share[:, :, 0]

    def other_sinks(self) -> Tensor:
        """[L, H]: how many tokens besides the first are sinks."""
        return ((self.share[:, :, 1:] >= self.epsilon) & self.candidates[1:]).sum(-1)

    def to_json(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "layers": self.layers,
            "first_token_share": self.first_token_share().tolist(),
            "sinks": [s.__dict__ for s in self.sinks()],
        }

    def plot(self, path: str | Path) -> Path:
        """Two heat maps (layers x heads): the first token's share, and the number of other sink tokens."""
        from tokensieve.plotstyle import pyplot, save

        plt = pyplot()

        first, other = self.first_token_share().numpy(), self.other_sinks().numpy()
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len(self.layers) + 2.5), constrained_layout=True)
        for ax, data, title, cmap in (
            (axes[0], first, "attention share of the first token", "viridis"),
            (axes[1], other, f"other sink tokens (share >= {self.epsilon})", "magma"),
        ):
            im = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
            ax.set_title(title)
            ax.set_xlabel("query head")
            ax.set_ylabel("layer")
            ax.set_yticks(range(len(self.layers)), [str(i) for i in self.layers], fontsize=7)
            fig.colorbar(im, ax=ax)
        path = Path(path)
        save(fig, path, dpi=120)
        return path


def sink_map(
    model: Any,
    tokenizer: Any,
    context: Any,
    epsilon: float = 0.3,
    min_queries: int = 32,
    max_chunk_bytes: int = 16 << 20,
) -> SinkMap:
    """Run ``context`` (text or token ids, one row) once and measure every query head's mean attention per token."""
    from tokensieve.core.observe.hooks import prepare
    from tokensieve.kv.cache import CompressibleCache
    from tokensieve.kv.observed import forward
    from tokensieve.runtime.encode import encode_context, pad_id_of
    from tokensieve.runtime.prompts import PromptFormat

    prepare(model)
    fmt = PromptFormat(tokenizer) if tokenizer is not None else None
    ids, mask = encode_context(context, fmt, pad_id_of(tokenizer, model))
    if ids.shape[0] != 1:
        raise ValueError("the sink map takes one context")
    cache = CompressibleCache(model.config)
    sums: dict[int, Tensor] = {}
    stat = AttnSum()

    def record(layer, query: Tensor, scaling: float) -> None:
        layer.on_attention = None
        b, h, t, d = query.shape
        keys = layer.keys.repeat_interleave(h // layer.keys.shape[1], 1)  # each query head its own group
        sums[layer.layer_idx] = accumulate(
            [stat], query.view(b, h, 1, t, d), keys, layer.valid, scaling, max_chunk_bytes
        )[stat.key][0]

    for layer in cache.sieve_layers:
        layer.on_attention = record
    forward(model, ids, mask, cache, "the sink map")
    t = ids.shape[1]
    counts = visible_counts(torch.arange(t), t, None, 1)[0]  # queries that see each token
    layers = sorted(sums)
    share = torch.stack([sums[i] for i in layers]) / counts.clamp(min=1)
    candidates = counts >= min(min_queries, max(1, t // 2))
    tokens = None if tokenizer is None else [tokenizer.decode([i]) for i in ids[0].tolist()]
    return SinkMap(layers, share, candidates, epsilon, tokens)
