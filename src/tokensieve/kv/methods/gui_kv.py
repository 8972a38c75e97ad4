from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.scores.attention import pool_keys
from tokensieve.kv.methods.base import Method


def share(x: Tensor, valid: Tensor | None) -> Tensor:
    """Each row (last dim) over its sum across the real tokens (padding 0)."""
    if valid is not None:
        x = x * valid.view(valid.shape[0], *[1] * (x.dim() - 2), valid.shape[1])
    return x / x.sum(-1, keepdim=True).clamp(min=1e-12)


@dataclass
class GUIKV(Method):
    """Spatial saliency: SnapKV's window attention (sum over the last ``window`` queries, GQA mean, max-pooled)
    plus ``alpha`` x the L2 norm of the token's hidden state, each as a share of its row's total so that neither
    scale dominates. A token with a large hidden state (a salient screen region, a rare word) survives even when
    the recent queries look elsewhere. Deviation, stated: the norm is taken of the prefill's final hidden states,
    shared by every layer (the paper reads each layer's); the temporal half (projecting older screenshots' keys
    onto the current one's key subspace) applies to repeated screenshots and is not implemented."""

    id = "gui_kv"
    paper = "GUI-KV: Efficient GUI Agents via KV Cache with Spatio-Temporal Awareness (Huang et al., 2025)"
    rule = "share of window attention (SnapKV) + alpha x share of ||h_i|| (final hidden state); window kept"

    window: float = 32
    kernel: int = 7
    alpha: float = 1.0

    def needs(self) -> Needs:
        return Needs(window=int(self.window), whole_pass=True, final_hidden=True)

    def whole_pass(self, pre: Any) -> dict[int, Tensor]:
        if pre.hidden is None:
            raise RuntimeError("gui_kv needs the prefill's final hidden states: prefill with methods=['gui_kv']")
        norm = pre.hidden.float().norm(dim=-1)  # [B, T]
        return {layer.layer_idx: norm for layer in pre.cache.sieve_layers}

    def score(self, x: ScoreInputs) -> Tensor:
        attn = pool_keys(x.window_probs(int(self.window)).sum(3).mean(2), self.kernel, "max")
        norm = x.require_pass_score().to(attn.device)[:, None, :]  # [B, 1, T]
        return share(attn, x.valid) + self.alpha * share(norm, x.valid)
