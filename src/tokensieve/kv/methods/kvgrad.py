from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.observe.full import reconstruction_scores
from tokensieve.kv.methods.kvzip import KVzip
from tokensieve.runtime.prompts import PromptFormat


def head_output_norms(values: Tensor, w_o: Tensor) -> Tensor:
    """``values [B, Hkv, T, D]``, ``W_O [hidden, H * D]`` -> ``[B, Hkv, G, T]``: ``||v_j W_O^(h)||`` for each query
    head h of each GQA group (what pair j can add to the layer's output through head h)."""
    hkv, d = values.shape[1], values.shape[3]
    heads = w_o.float().reshape(w_o.shape[0], -1, d).transpose(0, 1)  # [H, hidden, D]
    gram = (heads.transpose(-1, -2) @ heads).reshape(hkv, -1, d, d)  # [Hkv, G, D, D]: W_h' W_h
    v = values.float()
    return torch.einsum("bktd,kgde,bkte->bkgt", v, gram.to(v.device), v).clamp(min=0).sqrt()


def output_norms(values: Tensor, w_o: Tensor) -> Tensor:
    """``[B, Hkv, T]``: ``head_output_norms`` averaged over the query heads of each GQA group."""
    return head_output_norms(values, w_o).mean(2)


@dataclass
class KVgrad(KVzip):
    """KVzip's reconstruction pass with each attention weight scaled by what it changes downstream (KVgrad):
    ``S_j = max_{p, h in group} A^h[p, j] * ||v_j W_O^(h)|| * ||dPhi / da_p||``, where ``a_p`` is the layer's
    attention output at reconstruction token p and ``Phi = sum_p ||h_p^L||^2`` over the reconstruction tokens
    (``h^L``: the last decoder layer's output). The gradient factor costs one forward and one backward pass
    through the frozen model per chunk before kvzip's scoring forward (``core.observe.full.probe_gradients``),
    about 4x a prefill. Global top-k by default (kvzip's ``scope``).

    ``gradient=False`` drops the gradient factor (every probe weighs 1) and keeps the cheaper earlier form: the
    max reconstruction attention times the group's mean ``||v_j W_O^(h)||``. Against kvpress's ``KVgradPress``
    (``benchmarks/unseen_kvpress/agreement.py``): kvpress replays each chunk with its own prompt and takes the
    softmax over the sinks, that chunk and the replay only, scores only that chunk's pairs, and counts the
    prompt's tokens as probes; tokensieve keeps kvzip's full softmax over the whole context, its prompt, and
    probes on the chunk's tokens only."""

    id = "kvgrad"
    paper = "KVgrad (2026): gradient- and output-weighted reconstruction attention for KV eviction"
    rule = "max over reconstruction queries and the group of A[p, j] x ||v_j W_O^(h)|| x ||dPhi/da_p||"

    gradient: bool = True

    def whole_pass(self, pre: Any) -> dict[int, Any]:
        w_o = compat.output_projections(pre.model)
        values = {layer.layer_idx: layer.values for layer in pre.cache.sieve_layers}
        if not self.gradient:
            base = super().whole_pass(pre)
            scores = {i: s * output_norms(values[i], w_o[i]) for i, (s, _) in base.items()}
        else:
            key = ("kvgrad", self.chunk, self.stride, self.sample, self.prompt)
            if key not in pre.memo:
                tok = pre.tokenizer
                prompt_ids = PromptFormat(tok).question_ids(self.prompt) if tok is not None and self.prompt else []
                weights = {i: head_output_norms(v, w_o[i]) for i, v in values.items()}
                pre.memo[key] = reconstruction_scores(
                    pre.model, pre.cache, pre.context_ids, pre.context_mask, prompt_ids, self.chunk, self.stride,
                    sample=self.sample, gradient=True, key_weights=weights,
                )  # fmt: skip
            scores = dict(pre.memo[key])
        shared = {"scores": scores, "counts": {}}
        return {i: (s, shared) for i, s in scores.items()}
