from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tokensieve.errors import NotPreparedError
from tokensieve.kv.sparse.base import Index, SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.calibrate import LayerSample, calibrated
from tokensieve.kv.sparse.select import channel_scores


def outlier_channels(samples: list[LayerSample], r: int) -> Tensor:
    """[L, Hkv, r]: per KV head, the channels with the largest expected |q_c k_c| = E|q_c| E|k_c| (the
    group's query heads summed), i.e. those that carry most of q.k on the calibration text."""
    out = []
    for s in samples:
        imp = s.queries.abs().mean(2).sum(1) * s.keys.abs().mean(1)  # [Hkv, D]
        out.append(imp.topk(r, dim=-1).indices.sort(-1).values)
    return torch.stack(out)


@dataclass
class DoubleSparsity(SparseMethod):
    """Offline calibration (cached per model) finds the ``channels`` outlier channels of each KV head
    (default head_dim / 8). The layer keeps a *label cache* with just those channels of every key; a decode
    step scores the slots by q.k over them (per-head softmax, GQA mean), then attends exactly over the
    top-k."""

    id = "double_sparsity"
    paper = "Post-Training Sparse Attention with Double Sparsity (Yang et al., 2024)"
    rule = "q.k over r calibrated outlier channels (label cache) -> top-k -> exact attention"

    channels: int | None = None
    calibration_tokens: int = 512
    _table: Tensor | None = field(default=None, repr=False)

    def setup(self, model, tokenizer=None) -> None:
        cfg = model.config.get_text_config(decoder=True)
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        r = self.channels or max(1, d // 8)
        self._table = calibrated(
            self.id, model, tokenizer, {"r": r}, self.calibration_tokens, lambda s: outlier_channels(s, r)
        )

    def table(self, layer: int) -> Tensor:
        if self._table is None:
            raise NotPreparedError(
                f"{self.id} is not calibrated: build it with SparseCache(model, ...) or call setup(model)"
            )
        return self._table[layer]

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        ch = self.table(layer).to(keys.device)
        return {"labels": keys.float().gather(-1, ch[None, :, None, :].expand(keys.shape[0], -1, keys.shape[2], -1))}

    def extend_index(self, index: Index, keys: Tensor, valid: Tensor | None, n_new: int, layer: int) -> Index:
        new = self.build_index(keys[:, :, -n_new:], None, layer)["labels"]
        return {"labels": torch.cat([index["labels"], new], 2)}

    def select(self, x: SelectInputs) -> Selection:
        ch = self.table(x.layer).to(x.q.device)
        scores = channel_scores(x.q, x.index["labels"], ch, x.valid)
        return Selection(scores, ch.shape[-1] / x.keys.shape[-1])
