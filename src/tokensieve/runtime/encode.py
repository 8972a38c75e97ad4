"""Token ids from text or ids (left-padded batches) and the pad id: what every consumer feeds a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve.errors import EmptyContextError
from tokensieve.runtime.prompts import PromptFormat

Context = str | Sequence[str] | Tensor | Sequence[Sequence[int]]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor | None]:
    """Rows of ids as one left-padded [B, T] tensor and its mask (None when no row is padded)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, n - len(r) :] = torch.tensor(list(r))
            mask[i, n - len(r) :] = 1
    return ids, (None if bool(mask.all()) else mask)


def pad_id_of(tokenizer: PreTrainedTokenizerBase | None, model: PreTrainedModel) -> int:
    for src in (tokenizer, model.generation_config, model.config):
        for attr in ("pad_token_id", "eos_token_id"):
            v = getattr(src, attr, None)
            if isinstance(v, list):
                v = v[0] if v else None
            if v is not None:
                return int(v)
    return 0


def encode_context(context: Context, fmt: PromptFormat | None, pad: int) -> tuple[Tensor, Tensor | None]:
    """Token ids [B, T] (left-padded) and a mask (None without padding) from text(s) or ids."""
    if isinstance(context, Tensor):
        ids = context if context.dim() == 2 else context.unsqueeze(0)
        rows = [r.tolist() for r in ids]
    elif isinstance(context, str) or (isinstance(context, Sequence) and context and isinstance(context[0], str)):
        texts = [context] if isinstance(context, str) else list(context)
        if any(not t.strip() for t in texts):
            raise EmptyContextError("the context is empty: pass the text (or token ids) to compress")
        if fmt is None:
            raise TypeError("text contexts need a tokenizer")
        rows = [fmt.context_ids(t) for t in texts]
    else:
        rows = [list(r) for r in context]
    if not rows or any(len(r) == 0 for r in rows):
        raise EmptyContextError("the context is empty: pass the text (or token ids) to compress")
    return left_pad(rows, pad)

