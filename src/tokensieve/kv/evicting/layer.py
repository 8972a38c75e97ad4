"""A cache layer that never holds more than ``budget`` tokens per head while generating.

Each forward: the new keys are appended (``update``), attention runs on SDPA over the held slots (so with
nothing evicted the outputs are the plain model's, bit for bit), the new queries' attention over the held
slots is folded into the rule's state, and the lowest-scoring unprotected slots are evicted down to the
budget. Between forwards a layer holds at most ``budget`` slots per head; inside one, ``budget`` plus the
forward's new tokens (they must be attended before they can be scored).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe import hooks
from tokensieve.core.observe.capture import Needs, observe
from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.core.ops.select import select
from tokensieve.core.scores.attention import group_queries
from tokensieve.kv.cache import SieveLayer
from tokensieve.kv.methods import Method
from tokensieve.kv.methods.decode_rule import DecodeRule, State, Step
from tokensieve.kv.pages import Paging, pages_held, select_pages


@dataclass
class PrefillPlan:
    """Optional prefill compression that runs first (any prefill-eviction method), then decode eviction."""

    method: Method
    keep: float | None = None
    budget: int | None = None

    def layer_budget(self, n_tokens: int) -> int:
        if self.keep is not None:
            return max(1, min(n_tokens, round(self.keep * n_tokens)))
        return min(int(self.budget or n_tokens), n_tokens)


def gather_state(state: State, idx: Tensor) -> State:
    """Keep slots ``idx [B, Hkv, k]`` in every state tensor ``[..., B, Hkv or 1, S]``."""
    out = {}
    for name, t in state.items():
        i = idx[:, : t.shape[-2]]
        out[name] = t.gather(-1, i.expand(*t.shape[:-3], *i.shape))
    return out


def pad_state(state: State, n: int) -> State:
    """Zeros for ``n`` appended slots."""
    return {name: torch.cat([t, t.new_zeros(*t.shape[:-1], n)], -1) for name, t in state.items()}


def query_attention(query: Tensor, keys: Tensor, mask: Tensor | None, scaling: float) -> tuple[Tensor, Tensor, Tensor]:
    """The new queries' attention over the held slots: (logits, probs) ``[B, Hkv, G, q, S]`` and the bool
    mask ``[B, 1, q, S]`` they used. ``mask`` is what SDPA ran with (None = causal over the last q slots)."""
    b, hkv, s, d = keys.shape
    q_len = query.shape[-2]
    qg = group_queries(query, hkv).float()
    g = qg.shape[2]
    logits = torch.matmul((qg * scaling).reshape(b, hkv, g * q_len, d), keys.float().transpose(-1, -2))
    logits = logits.view(b, hkv, g, q_len, s)
    if mask is None:
        rows = torch.arange(s - q_len, s, device=keys.device)
        allowed = (torch.arange(s, device=keys.device)[None, :] <= rows[:, None])[None, None]
    else:
        allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    logits = logits.masked_fill(~allowed[:, :, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
    return logits, probs, allowed.expand(b, 1, q_len, s)


class EvictingLayer(SieveLayer):
    """A ``SieveLayer`` with a running score per held slot and a fixed budget (None for a rule that ``decides``)."""

    def __init__(
        self,
        layer_idx: int,
        rule: DecodeRule,
        budget: int | None,
        sinks: int = 0,
        window: int = 0,
        n_layers: int = 1,
        prefill: PrefillPlan | None = None,
    ) -> None:
        super().__init__(layer_idx)
        self.rule, self.budget, self.sinks, self.window = rule, budget, sinks, window
        self.n_layers, self.prefill = n_layers, prefill
        self.state: State | None = None
        self.prompt_len = 0
        self.prompt_held = 0  # slots held by this layer during the prompt's forward, before it is cut
        self.peak_held = 0  # the most slots held while generating (inside a forward, before its eviction)
        self.on_step: Callable[[EvictingLayer], None] | None = None  # test/measure hook, after each eviction
        self.paging: Paging | None = None  # whole pages: at most budget // size pages held (``kv.pages``)

    @property
    def needs_tokensieve_attention(self) -> bool:
        return True

    def attend(self, module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kwargs):
        mask = self.attention_mask(query.shape[-2], mask)
        out = hooks.sdpa(module, query, key, value, mask, **kwargs)
        scaling = hooks.scaling_of(query, kwargs)
        if self.state is None:
            self.prompt_held = self.n_held
            self._start(query, scaling)
        else:
            self.peak_held = max(self.peak_held, self.n_held)
            self._step(query, mask, scaling)
        if self.on_step is not None:
            self.on_step(self)
        return out

    # --- the prefill: observe, optionally compress with a prefill method, start the running score ------------
    def _start(self, query: Tensor, scaling: float) -> None:
        needs = self.rule.needs() | (self.prefill.method.needs() if self.prefill is not None else Needs())
        obs = observe(needs, query, self.keys, self.valid, scaling)
        x = ScoreInputs(self.keys, self.values, self.valid, obs, self.layer_idx, self.n_layers)
        state = self.rule.init(x)
        self.prompt_len = self.cumulative_length
        n_real = self.n_held if self.valid is None else int(self.valid.sum(-1).max())
        idx = None
        if self.prefill is not None and self.prefill.layer_budget(n_real) < self.n_held:
            k = min(self.prefill.layer_budget(n_real), self.budget or self.n_held)
            idx = self._select(self.prefill.method.score(x), k, *self.prefill.method.protected(k))
        elif self.rule.decides:
            state, idx = self.rule.keep(self, state, 0)
        elif self._over_budget():
            idx = self._choose(state)
        self._keep(state, idx)

    # --- one forward while generating ------------------------------------------------------------------
    def _step(self, query: Tensor, mask: Tensor | None, scaling: float) -> None:
        q_len = query.shape[-2]
        logits, probs, allowed = query_attention(query, self.keys, mask, scaling)
        b, hkv, s = self.keys.shape[:3]
        real = self.valid[:, -q_len:].float() if self.valid is not None else probs.new_ones(b, q_len)
        positions = self.token_index
        if positions is None:
            positions = torch.arange(s, device=self.keys.device).expand(b, hkv, s)
        step = Step(
            probs=probs,
            logits=logits,
            real=real,
            rows=torch.arange(self.cumulative_length - q_len, self.cumulative_length, device=self.keys.device),
            positions=positions,
            n_visible=allowed.sum(-1).view(b, 1, 1, q_len, 1).clamp(min=1),
            prompt_len=self.prompt_len,
        )
        state = self.rule.update(pad_state(self.state, q_len), step)
        if self.rule.decides:  # the share kept is the rule's output (ratio_decoding, dms)
            self._keep(*self.rule.keep(self, state, q_len))
        else:
            self._keep(state, self._choose(state) if self._over_budget() else None)

    def _choose(self, state: State) -> Tensor:
        b, hkv, s = self.keys.shape[:3]
        return self._select(self.rule.score(state).expand(b, hkv, s), self.budget, self.sinks, self.window)

    def _select(self, scores: Tensor, k: int, sinks: int, window: int) -> Tensor:
        if self.paging is None:
            return select(scores, k, self.valid, sinks, window)
        return select_pages(scores, k, self.valid, sinks, window, self.paging, self.token_index)

    def _over_budget(self) -> bool:
        if self.paging is None:
            return self.n_held > self.budget
        return int(pages_held(self, self.paging).max()) > self.paging.n_pages(self.budget)

    def _keep(self, state: State, idx: Tensor | None) -> None:
        if idx is not None:
            self.evict(idx)
            state = gather_state(state, idx)
        self.state = state

    # --- bookkeeping ----------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        return sum(t.nbytes for t in (self.state or {}).values())

    def fork(self) -> EvictingLayer:
        out = copy.copy(self)
        out.on_attention = None
        out.state = None if self.state is None else dict(self.state)
        return out

    def reset(self) -> None:
        super().reset()
        self.state, self.prompt_len, self.prompt_held, self.peak_held = None, 0, 0, 0

    def _batch_apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        super()._batch_apply(fn)
        if self.state is not None:  # the batch axis of a state tensor is third from the end
            self.state = {k: fn(t.movedim(-3, 0)).movedim(0, -3) for k, t in self.state.items()}

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a budgeted decode cache cannot be cropped (assisted decoding is not supported)")
