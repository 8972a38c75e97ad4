from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tokensieve.errors import NotPreparedError
from tokensieve.kv.sparse.base import Index, SelectInputs, Selection, SparseMethod
from tokensieve.kv.sparse.calibrate import LayerSample, calibrated
from tokensieve.kv.sparse.select import channel_scores, exact_topk, group_probs, overlap, rope_chunk_channels

CALIBRATION_ROWS = 64


def dominant_chunks(samples: list[LayerSample], n_chunks: int, top_fraction: float = 0.125) -> Tensor:
    """[L, Hkv, n_chunks]: per KV head, the RoPE frequency chunks whose partial score q_f . k_f alone agrees
    best with the full score (FASA's contextual agreement: the recall of the top ``top_fraction`` keys by the
    chunk's attention against the top keys by the full attention, averaged over the last calibration rows)."""
    out = []
    for s in samples:
        d = s.queries.shape[-1]
        rows = s.rows[-min(CALIBRATION_ROWS, s.rows.numel() // 2) :]  # rows that see many keys
        q = s.queries[:, :, -rows.numel() :].permute(2, 0, 1, 3) * s.scaling  # [n, Hkv, G, D]: rows as batch
        t = int(rows[-1]) + 1
        keys = s.keys[:, :t]  # [Hkv, T, D]
        visible = torch.arange(t)[None, :] <= rows[:, None]  # [n, T]
        k = max(1, int(top_fraction * t))
        truth = exact_topk(group_probs(q @ keys.transpose(-1, -2), visible), k, visible)
        # every chunk's partial logits at once: [n, Hkv, G, T, F], chunk f = channels (f, f + D/2)
        qp, kp = q.unflatten(-1, (2, d // 2)), keys.unflatten(-1, (2, d // 2))
        part = torch.einsum("nhgcf,htcf->nhgtf", qp, kp).masked_fill(~visible[:, None, None, :, None], float("-inf"))
        probs = torch.softmax(part, 3).mean(2).permute(0, 3, 1, 2)  # [n, F, Hkv, T]
        mine = probs.topk(k, -1).indices.flatten(1, 2)  # [n, F * Hkv, k]
        recall = overlap(mine, truth.repeat(1, d // 2, 1), t)[0].view(-1, d // 2, truth.shape[1])
        ca = recall.mean(0).T  # [Hkv, F]: contextual agreement of each chunk
        out.append(ca.topk(n_chunks, dim=-1).indices.sort(-1).values)
    return torch.stack(out)


@dataclass
class FASA(SparseMethod):
    """RoPE rotates each channel pair (f, f + D/2) at its own frequency: a *frequency chunk*. Calibration
    (cached per model) finds, per KV head, the ``chunks`` chunks (default D / 16, i.e. 1/8 of the channels)
    whose partial score agrees best with the full score; a decode step scores slots with those chunks only,
    then attends exactly over the top-k."""

    id = "fasa"
    paper = "FASA: Frequency-Aware Sparse Attention (2025)"
    rule = "q.k over calibrated dominant RoPE frequency chunks -> top-k -> exact attention"

    chunks: int | None = None
    calibration_tokens: int = 512
    _table: Tensor | None = field(default=None, repr=False)

    def setup(self, model, tokenizer=None) -> None:
        cfg = model.config.get_text_config(decoder=True)
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        n = self.chunks or max(1, d // 16)
        self._table = calibrated(
            self.id, model, tokenizer, {"n": n}, self.calibration_tokens, lambda s: dominant_chunks(s, n)
        )

    def channels(self, layer: int, head_dim: int) -> Tensor:
        if self._table is None:
            raise NotPreparedError(
                f"{self.id} is not calibrated: build it with SparseCache(model, ...) or call setup(model)"
            )
        return rope_chunk_channels(self._table[layer], head_dim)

    def build_index(self, keys: Tensor, valid: Tensor | None, layer: int) -> Index:
        ch = self.channels(layer, keys.shape[-1]).to(keys.device)
        return {"labels": keys.float().gather(-1, ch[None, :, None, :].expand(keys.shape[0], -1, keys.shape[2], -1))}

    def extend_index(self, index: Index, keys: Tensor, valid: Tensor | None, n_new: int, layer: int) -> Index:
        new = self.build_index(keys[:, :, -n_new:], None, layer)["labels"]
        return {"labels": torch.cat([index["labels"], new], 2)}

    def select(self, x: SelectInputs) -> Selection:
        ch = self.channels(x.layer, x.keys.shape[-1]).to(x.q.device)
        return Selection(channel_scores(x.q, x.index["labels"], ch, x.valid), ch.shape[-1] / x.keys.shape[-1])
