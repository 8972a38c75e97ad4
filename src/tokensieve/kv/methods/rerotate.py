from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from tokensieve.compat import rope_inv_freq_per_layer
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import CalibrationError
from tokensieve.kv.cache.renumber import renumber
from tokensieve.kv.methods.wrap import Wrapper


@dataclass
class Rerotate(Wrapper):
    """Key re-rotation after eviction by any score (``base``), as kvpress's ``KeyRerotationPress``: each kept key is
    turned from its position p to its slot's index j (RoPE by j - p), so the n kept tokens sit at 0 .. n-1 and the
    question and answer continue at n, as if the kept tokens alone had been prefilled (the keys equal such a fresh
    prefill's for the same hidden states; later layers' hidden states still saw the whole context). With ``block``
    chunked prefill the cache is renumbered after every block, so no position ever exceeds budget + block and a
    document longer than the model's trained window can be read. Every full layer must keep as many tokens (the
    uniform allocator, a per-layer score). On a hybrid model the sliding windows keep their last min(held, n)
    tokens, shifted like the context's end (stated rule, ``kv/cache/renumber.py``). Deviation: kvpress gives each
    head's kept tokens their order by position; so do we (slots stay in position order), per head."""

    id = "rerotate"
    paper = "key re-rotation (kvpress KeyRerotationPress; FINCH, Corallo and Papotti, TACL 2024)"
    rule = "after eviction by base, kept key j rotated by RoPE(j - p_j): positions 0..n-1, later tokens at n"
    renumbers: ClassVar[bool] = True

    def bind(self, model: Any) -> None:
        super().bind(model)
        self._inv_freqs = rope_inv_freq_per_layer(model)

    @property
    def evicts_only(self) -> bool:
        return self._inner.evicts_only

    def act(self, layer: Any, x: ScoreInputs, budget: int, allocator: Any, inplace: bool) -> Any:
        return self._inner.act(layer, x, budget, allocator, inplace)  # the base's own layout (renumber checks it)

    def finish(self, cache: Any, context_mask: Tensor | None) -> Tensor | None:
        inv = getattr(self, "_inv_freqs", None)
        if inv is None:
            raise CalibrationError("rerotate needs the model's rotary frequencies: compress through tokensieve.compress"
                                   " / prefill, which bind them (or call method.bind(model))")  # fmt: skip
        return renumber(cache, inv, context_mask)
