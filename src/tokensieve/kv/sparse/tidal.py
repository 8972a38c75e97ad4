from __future__ import annotations

from dataclasses import dataclass

import torch

from tokensieve.kv.sparse.base import SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.select import logits, mask_padding


@dataclass
class TidalDecode(SparseMethod):
    """The first ``dense_layers`` layers run dense attention. *Selection layers* (by default the first
    layer after those and the middle layer; or ``select_layers``) also run dense attention and rank every
    slot by the attention of all their heads summed; every later layer reads the top-k of the latest
    selection layer, so it scores nothing itself (position reuse across layers)."""

    id = "tidal"
    paper = "TidalDecode: Fast and Accurate LLM Decoding with Position Persistent Sparse Attention (Yang et al., 2024)"
    rule = "dense selection layers pick top-k positions by summed attention; other layers reuse them"

    dense_layers: int = 2
    select_layers: tuple[int, ...] | None = None

    def selection_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.select_layers is not None:
            return tuple(self.select_layers)
        return tuple(sorted({min(self.dense_layers, n_layers - 1), n_layers // 2}))

    def select(self, x: SelectInputs) -> Selection:
        if x.layer in self.selection_layers(x.n_layers):
            probs = torch.softmax(mask_padding(logits(x.q, x.keys.float()).flatten(1, 2), x.valid), -1)
            x.shared["tidal"] = (x.step, probs.nan_to_num(0.0).sum(1, keepdim=True))
            return Selection(None, 1.0)
        chosen = x.shared.get("tidal")
        if x.layer < self.dense_layers or chosen is None or chosen[0] != x.step:
            return Selection(None, 1.0)  # nothing selected yet in this step: dense
        return Selection(chosen[1], 0.0)
