"""Prefill pruning inside a real forward: forward pre-hooks on the decoder layers, installed per call.

The engine follows which prompt positions are still in the sequence (``alive``). Before a pruning layer
it ranks them by the importance the pruner asked for, drops the rest from the hidden states and from every
per-token argument the model hands its layers (position embeddings, position ids, the mask), so all later
layers run on fewer tokens. Each cache layer learns the true positions it holds. Nothing is patched:
the hooks exist only inside ``with prune(...)`` and act only on forwards that use its cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokensieve import compat
from tokensieve.core.ops.select import select
from tokensieve.core.scores.attention import attention_probs, group_queries
from tokensieve.errors import BatchError, PaddingError, UnsupportedArchitectureError
from tokensieve.kv.cache import CompressibleCache
from tokensieve.kv.prune.base import Pruner
from tokensieve.kv.prune.layer import PrunedLayer


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder's layer list, found through transformers' own ``get_decoder`` (no model-type branches)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        name = type(model).__name__
        raise UnsupportedArchitectureError(f"{name} exposes no decoder layer list (get_decoder().layers) to prune")
    return layers


def take(x: Any, idx: Tensor, n: int) -> Any:
    """``x`` restricted to sequence positions ``idx`` along its token axis (axis 1, or 0 for 1-D tensors);
    a 4-D mask on both of its last axes; tuples element-wise; anything without a length-``n`` axis as is."""
    if isinstance(x, tuple | list):
        return type(x)(take(v, idx, n) for v in x)
    if not isinstance(x, Tensor):
        return x
    if x.dim() == 4 and x.shape[-1] == n and x.shape[-2] == n:
        return x.index_select(-2, idx).index_select(-1, idx)
    if x.dim() >= 2 and x.shape[1] == n:
        return x.index_select(1, idx.to(x.device))
    if x.dim() == 1 and x.shape[0] == n:
        return x.index_select(0, idx.to(x.device))
    return x


def join(stored: Any, current: Any) -> Any:
    """Revived tokens' stored arguments in front of the current step's, along the token axis."""
    if isinstance(current, tuple | list):
        return type(current)(join(s, c) for s, c in zip(stored, current, strict=True))
    if not isinstance(current, Tensor) or not isinstance(stored, Tensor):
        return current
    return torch.cat([stored.to(current.device), current], 0 if current.dim() == 1 else 1)


class PrunedCache(CompressibleCache):
    """A ``CompressibleCache`` whose full-attention layers accept tokens at arbitrary positions."""

    def __init__(self, model_or_config) -> None:
        super().__init__(model_or_config)
        if self.has_sliding_layers:
            raise UnsupportedArchitectureError(
                "prefill pruning changes which positions a sliding window would hold; it needs a model whose layers "
                "are all full attention (load it with sliding_window=None, or prune a Llama/Qwen/Mistral model)"
            )
        for layer in self.sieve_layers:
            compat.set_cache_layer(self, layer.layer_idx, PrunedLayer(layer.layer_idx))


class PruneEngine:
    """Installs the hooks on enter, removes them on exit. ``alive_per_layer`` and ``revived`` report what
    happened; the pruner's policy decides where and how much."""

    def __init__(self, model, pruner: Pruner, cache: PrunedCache) -> None:
        self.model, self.pruner, self.cache = model, pruner, cache
        self.layers = decoder_layers(model)
        n = len(self.layers)
        self.stages, self.observed = pruner.stages(n), pruner.observed_layers(n)
        self.handles: list = []
        self.prompt_len: int | None = None
        self.alive: Tensor | None = None  # prompt positions still in the sequence
        self.rows: Tensor | None = None  # positions of the hidden-state rows flowing through this forward
        self.prefill = False
        self.importance: Tensor | None = None  # cumulative: per position; latest: (positions, values)
        self.latest: dict[int, tuple[Tensor, Tensor]] = {}
        self.aux: dict[int, dict[str, Any]] = {}  # stage -> pruned positions, hidden states, per-token kwargs
        self.extra: dict[str, Any] = {}  # this step's revived rows' per-token kwargs
        self.alive_per_layer: list[int] = []
        self.revived: dict[int, int] = {}  # stage -> tokens revived there while generating
        self.name = getattr(pruner, "id", type(pruner).__name__)
        self.carried = False  # the current model forward was given this engine's cache
        self.engaged = 0  # decoder layers whose pre-hook found the cache in this forward

    # --- install / remove ---------------------------------------------------------------------------
    def __enter__(self) -> PruneEngine:
        self.handles.append(self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._model_post_hook, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
        for layer in self.cache.sieve_layers:
            if layer.layer_idx in self.observed:
                layer.on_attention = self._observe
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for layer in self.cache.sieve_layers:
            layer.on_attention = None
            layer.rows = None

    # --- the hooks ------------------------------------------------------------------------------------
    def _model_pre_hook(self, module, args, kwargs) -> None:
        self.carried = compat.given_cache(kwargs) is self.cache
        self.engaged = 0

    def _model_post_hook(self, module, args, kwargs, output) -> None:
        # no silent no-op: a forward given our cache must have passed it to every decoder layer we hooked
        carried, self.carried = self.carried, False
        if carried and self.engaged != len(self.layers):
            raise compat.not_engaged(
                f"prefill pruning ({self.name})",
                self.model,
                f"{self.engaged} of {len(self.layers)} decoder layers were called with the cache it was given",
            )

    def _pre_hook(self, i: int):
        def hook(module, args, kwargs):
            if compat.call_cache(module, kwargs) is not self.cache:
                return None
            self.engaged += 1
            hidden = compat.layer_hidden(args, kwargs)
            if i == 0:
                self._start(hidden, kwargs)
            if i in self.stages:
                hidden = self._prune(i, hidden, kwargs) if self.prefill else self._revive(i, hidden)
            kwargs = self._layer_kwargs(kwargs)
            layer = self.cache.layers[i]
            if isinstance(layer, PrunedLayer):
                layer.rows = self.rows
            if self.prefill:
                self.alive_per_layer.append(int(self.rows.numel()))
            return compat.layer_call(hidden, args, kwargs)

        return hook

    def _start(self, hidden: Tensor, kwargs: dict[str, Any]) -> None:
        if hidden.shape[0] != 1:
            raise BatchError("prefill pruning runs one sequence at a time (batch size 1): prune each row separately")
        mask = kwargs.get(compat.LAYER_MASK_ARG)
        seen = self.cache.layers[0].cumulative_length
        q = hidden.shape[1]
        self.prefill = self.prompt_len is None
        if self.prefill:
            if isinstance(mask, Tensor) and mask.dim() == 4 and not bool(mask[0, 0].diagonal().all()):
                raise PaddingError("prefill pruning cannot handle padding: pass one unpadded sequence")
            self.prompt_len = q
            self.alive = torch.arange(q, device=hidden.device)
        self.rows = torch.arange(seen, seen + q, device=hidden.device)
        self.extra = {}

    def _prune(self, i: int, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
        n_keep = min(self.alive.numel(), max(1, round(self.stages[i] * self.prompt_len)))
        if n_keep >= self.alive.numel():
            return hidden
        if self.pruner.cumulative:
            scores = self.importance[self.alive]
        else:
            positions, values = self.latest[i - 1]
            scores = values  # the observed layer held exactly the alive positions, in order
            assert torch.equal(positions, self.alive)
        rel = select(scores[None, None], n_keep, None, min(self.pruner.sinks, n_keep - 1), 1)[0, 0]
        if self.pruner.revive:
            dropped = torch.ones(self.alive.numel(), dtype=torch.bool, device=rel.device)
            dropped[rel] = False
            gone = dropped.nonzero().flatten()
            full = self.prompt_len
            self.aux[i] = {
                "positions": self.alive[gone],
                "hidden": hidden[:, gone],
                "kwargs": {k: take(v, self.alive[gone], full) for k, v in kwargs.items() if k != compat.LAYER_MASK_ARG},
            }
        self.alive = self.alive[rel]
        self.rows = self.alive
        return hidden[:, rel]

    def _revive(self, i: int, hidden: Tensor) -> Tensor:
        aux = self.aux.get(i)
        if aux is None or aux["positions"].numel() == 0 or (i - 1) not in self.latest:
            return hidden
        positions, values = self.latest[i - 1]
        n_top = min(values.numel(), max(1, round(self.stages[i] * self.cache.layers[0].cumulative_length)))
        chosen = positions[values.topk(n_top).indices]
        back = torch.isin(aux["positions"], chosen)
        if not bool(back.any()):
            return hidden
        idx, rest = back.nonzero().flatten(), (~back).nonzero().flatten()
        n_aux = back.numel()
        self.revived[i] = self.revived.get(i, 0) + idx.numel()
        self.rows = torch.cat([aux["positions"][idx], self.rows])
        for k, v in aux["kwargs"].items():  # revived rows go in front, in the same order as their hidden states
            mine = take(v, idx, n_aux)
            self.extra[k] = join(mine, self.extra[k]) if k in self.extra else mine
        hidden = torch.cat([aux["hidden"][:, idx].to(hidden.dtype), hidden], 1)
        self.aux[i] = {
            "positions": aux["positions"][rest],
            "hidden": aux["hidden"][:, rest],
            "kwargs": {k: take(v, rest, n_aux) for k, v in aux["kwargs"].items()},
        }
        return hidden

    def _layer_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.prefill:
            if self.rows.numel() == self.prompt_len:
                return kwargs  # nothing pruned yet: the model's own arguments, untouched (bit-exact)
            return {k: take(v, self.rows, self.prompt_len) for k, v in kwargs.items()}
        if not self.extra:
            return kwargs
        out = {k: join(self.extra[k], v) if k in self.extra else v for k, v in kwargs.items()}
        out[compat.LAYER_MASK_ARG] = None  # the layer masks revived rows by position itself
        return out

    # --- importance ----------------------------------------------------------------------------------
    def _observe(self, layer: PrunedLayer, query: Tensor, scaling: float) -> None:
        if not self.prefill and not self.pruner.revive:
            return
        n_slots = layer.keys.shape[2]
        n = 1 if not self.prefill else min(self.pruner.rows, query.shape[2])
        q = group_queries(query[:, :, -n:], layer.keys.shape[1]).float()
        rows = torch.arange(n_slots - n, n_slots, device=q.device)
        probs = attention_probs(q, layer.keys.float(), rows, None, scaling)  # [1, Hkv, G, n, S]
        values = probs.sum(3).mean((1, 2))[0]  # [S]: summed over the rows, mean over every head
        positions = layer.token_index[0, 0] if layer.token_index is not None else torch.arange(n_slots)
        if self.pruner.cumulative:
            if self.importance is None:
                self.importance = torch.zeros(self.prompt_len, device=values.device)
            self.importance.index_add_(0, positions.to(values.device), values)
        else:
            self.latest[layer.layer_idx] = (positions.to(values.device), values)
