from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.kv.methods.kvzip import KVzip


def output_norms(values: Tensor, w_o: Tensor) -> Tensor:
    """``values [B, Hkv, T, D]``, ``W_O [hidden, H * D]`` -> ``[B, Hkv, T]``: ``||v_j W_O^(h)||`` averaged over the
    query heads h of each GQA group (what pair j can add to the layer's output through each head)."""
    hkv, d = values.shape[1], values.shape[3]
    heads = w_o.float().reshape(w_o.shape[0], -1, d).transpose(0, 1)  # [H, hidden, D]
    gram = (heads.transpose(-1, -2) @ heads).reshape(hkv, -1, d, d)  # [Hkv, G, D, D]: W_h' W_h
    v = values.float()
    return torch.einsum("bktd,kgde,bkte->bkgt", v, gram.to(v.device), v).clamp(min=0).sqrt().mean(2)


@dataclass
class KVgrad(KVzip):
    """KVzip's reconstruction pass with each score weighted by what the pair can change downstream: the max
    reconstruction attention times ``||v_j W_O^(h)||``, the norm of its value through the output projection of
    the query heads that read it (mean over the GQA group). Global top-k by default (kvzip's ``scope``).
    Deviation, stated: the paper also multiplies each attention weight by the gradient norm of
    ``sum_p ||h_p^L||^2`` with respect to the probe token's attention output (one backward pass per chunk, 3-4x
    a prefill); that factor is not computed here (every probe weighs 1), and the ``W_O`` factor multiplies the
    max over queries rather than each weight before it (they commute for a per-pair factor)."""

    id = "kvgrad"
    paper = "KVgrad (2026): gradient- and output-weighted reconstruction attention for KV eviction"
    rule = "kvzip's max reconstruction attention x mean_g ||v_j W_O^(h)|| (gradient factor omitted)"

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        base = super().whole_pass(pre)
        w_o = compat.output_projections(pre.model)
        values = {layer.layer_idx: layer.values for layer in pre.cache.sieve_layers}
        scores = {i: s * output_norms(values[i], w_o[i]) for i, (s, _) in base.items()}
        shared = {"scores": scores, "counts": {}}
        return {i: (s, shared) for i, s in scores.items()}
