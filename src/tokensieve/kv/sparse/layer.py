"""A cache layer that keeps every token but reads only the selected ones at each decode step.

Prefill (several new tokens) and steps whose read budget covers the whole cache run exact SDPA, so such
forwards equal the plain model bit for bit. A decode step asks the method for scores, takes the top ``k``
slots per KV head (protected sinks and recent tokens first, padding never over a real token), gathers
their keys and values and runs SDPA over those alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokensieve.core.observe import hooks
from tokensieve.core.ops.select import gather_tokens, protection_mask
from tokensieve.core.scores.attention import group_queries
from tokensieve.kv.cache import SieveLayer
from tokensieve.kv.sparse import kernels
from tokensieve.kv.sparse.base import Index, SelectInputs, SparseMethod
from tokensieve.kv.sparse.select import exact_topk, group_probs, logits, overlap, top_slots

USE_KERNELS = True  # on CUDA with Triton installed, read the selected slots with the Triton kernel


@dataclass
class Meter:
    """Per-layer running sums over decode steps. Values may be device tensors: nothing synchronises with
    the GPU until ``mean()`` is read."""

    steps: int = 0
    dense_steps: int = 0
    read: Tensor | float = 0.0  # fraction of the K and V bytes touched (scoring + attended)
    attended: Tensor | float = 0.0  # fraction of the slots attended
    recall: Tensor | float = 0.0  # |selected & exact top-k| / k, k = the slots attended
    iou: Tensor | float = 0.0
    mass: Tensor | float = 0.0  # true attention mass on the selected slots

    def add(self, read, attended, recall=1.0, iou=1.0, mass=1.0) -> None:
        self.steps += 1
        self.read = self.read + read
        self.attended = self.attended + attended
        self.recall = self.recall + recall
        self.iou = self.iou + iou
        self.mass = self.mass + mass

    def mean(self) -> dict[str, float]:
        n = max(1, self.steps)
        return {
            "steps": self.steps,
            "dense_steps": self.dense_steps,
            "read_fraction": float(self.read) / n,
            "attended_fraction": float(self.attended) / n,
            "recall": float(self.recall) / n,
            "iou": float(self.iou) / n,
            "attention_mass": float(self.mass) / n,
        }


class SparseLayer(SieveLayer):
    def __init__(
        self,
        layer_idx: int,
        method: SparseMethod,
        read: float | int,
        rank: int = 0,
        n_layers: int = 1,
        shared: dict[str, Any] | None = None,
        measure: bool = False,
    ) -> None:
        super().__init__(layer_idx)
        self.method, self.read, self.rank, self.n_layers = method, read, rank, n_layers
        self.shared = shared if shared is not None else {}
        self.measure = measure
        self.meter = Meter()
        self.pool_meter = False  # True: forks add to this layer's meter (the bench measures through forks)
        self.index: Index | None = None
        self.on_select: Callable[[SparseLayer, Tensor], None] | None = None  # tests: sees the read slots

    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    def budget(self, n_real: int) -> int:
        """Slots to read per head: ``read`` tokens, or a fraction of the real tokens held."""
        if isinstance(self.read, int):
            return self.read
        return max(1, math.ceil(self.read * n_real))

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        q_len = query.shape[-2]
        mask = self.attention_mask(q_len, mask)
        if self.index is None:  # the prefill (or the first step after adopting a prefilled cache)
            self.index = self.method.build_index(self.keys, self.valid, self.rank)
        else:
            self.index = self.method.extend_index(self.index, self.keys, self.valid, q_len, self.rank)
        n_real = self.n_held if self.valid is None else int(self.valid.sum(-1).max())
        k = self.budget(n_real)
        if q_len > 1 or k >= n_real:
            return hooks.sdpa(module, query, key, value, mask, **kwargs)
        scaling = hooks.scaling_of(query, kwargs)
        b, hkv, s, _ = self.keys.shape
        q = group_queries(query, hkv)[:, :, :, 0].float() * scaling  # [B, Hkv, G, D]
        x = SelectInputs(
            q, self.keys, self.valid, self.index, k, self.rank, self.n_layers, self.cumulative_length, self.shared
        )
        sel = self.method.select(x)
        if sel.index is not None:
            self.index = sel.index
        if sel.scores is None:  # the method reads everything at this layer (e.g. a selection layer)
            self.meter.dense_steps += 1
            self.meter.add(1.0, 1.0)
            return hooks.sdpa(module, query, key, value, mask, **kwargs)
        sinks, window = self.method.protected(k)
        idx = top_slots(sel.scores.expand(b, hkv, s), k, self.valid, sinks, window)
        read = torch.ones_like(idx, dtype=torch.bool)
        if self.valid is not None:
            read &= self.valid.gather(1, idx.flatten(1)).view_as(idx)
        if sel.keep is not None:  # a dynamic count per head; protected slots are read regardless
            protect = protection_mask(self.valid, b, s, sinks, window, idx.device)
            read &= (sel.keep.expand(b, hkv, s) | protect[:, None]).gather(-1, idx)
        if self.on_select is not None:
            self.on_select(self, idx[..., None].where(read[..., None], -1)[..., 0])
        if USE_KERNELS and kernels.AVAILABLE and self.keys.is_cuda:
            units = idx.masked_fill(~read, -1).to(torch.int32).contiguous()
            out = kernels.sparse_decode_attention(
                query[:, :, 0].contiguous(), self.keys, self.values, units, 1, scaling
            )
            self._record(q, idx, read, sel.scoring_read, n_real)
            return out.unsqueeze(1), None  # [B, 1, H, D], as transformers' attention functions return
        g = query.shape[1] // hkv
        sub_mask = None if bool(read.all()) else read.repeat_interleave(g, 1)[:, :, None, :]
        out = hooks.sdpa(
            module, query, gather_tokens(self.keys, idx), gather_tokens(self.values, idx), sub_mask, **kwargs
        )
        self._record(q, idx, read, sel.scoring_read, n_real)
        return out

    def _record(self, q: Tensor, idx: Tensor, read: Tensor, scoring_read: float, n_real: int) -> None:
        n_read = read.float().sum(-1).mean()  # stays on the device: no synchronisation per layer
        bytes_read = (scoring_read * n_real + 2 * n_read) / (2 * n_real)
        if not self.measure:
            self.meter.add(bytes_read, n_read / n_real)
            return
        probs = group_probs(logits(q, self.keys.float()), self.valid)  # the true attention, per KV head
        per_head = read.sum(-1)  # [B, Hkv]: the oracle reads as many slots per head as the method did
        truth = exact_topk(probs, int(per_head.max()), self.valid)
        in_truth = torch.arange(truth.shape[-1], device=truth.device) < per_head[..., None]
        recall, iou = overlap(idx, truth, probs.shape[-1], read, in_truth)
        mass = (probs.gather(-1, idx) * read).sum(-1)
        self.meter.add(bytes_read, n_read / n_real, recall.mean(), iou.mean(), mass.mean())

    def fork(self) -> SparseLayer:
        out = copy.copy(self)
        out.on_attention = None
        if not self.pool_meter:
            out.meter = Meter()
        return out

    def reset(self) -> None:
        super().reset()
        self.index = None

    def _batch_apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        super()._batch_apply(fn)
        if self.index is not None:  # every index tensor is batch-first
            self.index = {k: fn(t) for k, t in self.index.items()}
        self.shared.clear()


__all__ = ["Meter", "SparseLayer"]
