"""``VlmSieve``: prune image tokens of a LLaVA-style model before its LLM and/or at a layer inside it.

Hooks, installed on enter and removed on exit (nothing is patched): a pre-hook on the model reads the prompt's ids
(where the image placeholders are); a pre-hook on the language model drops image tokens from the input embeddings,
the 2-D padding mask and the position ids before the first layer (``before_llm``), and while generating maps the
growing 2-D mask onto the shorter cache; for a cut inside the LLM (``late``), tokensieve's registered attention
(``core.observe.hooks``, SDPA underneath; this sieve is its ``vlm`` observer) records at layer K-1 the attention
the chosen query rows pay every key (those rows only, never T x T), and pre-hooks on layers K.. drop the image
tokens from the hidden states and every per-token argument (position embeddings, position ids, the 4-D mask) in the
prompt pass, then select the kept key columns of the mask while generating. Kept tokens keep their original
positions (RoPE sees the distances of the unpruned prompt; FastV does the same). With nothing pruned no hook
changes a tensor and the attention call is transformers' SDPA with the same arguments: outputs are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tokensieve import compat
from tokensieve.core.observe import hooks
from tokensieve.core.scores.attention import attention_probs, group_queries
from tokensieve.errors import BatchError, BudgetError, NotEngagedError, PaddingError, UnsupportedArchitectureError
from tokensieve.vlm.base import Inputs, VlmMethod


@dataclass
class _Prompt:
    """What one prompt pass decided; later generation steps follow it."""

    length: int  # T: the prompt as given
    n_image: int  # image tokens per row in the prompt
    kept0: Tensor | None  # [B, T0] prompt positions kept before the LLM (None: all of them)
    image0: Tensor  # [B, T0] bool: image positions among the LLM's inputs
    valid0: Tensor | None  # [B, T0] bool: not padding (None: no padding mask)
    rows: Tensor | None = None  # [B, T1] LLM-input positions kept from layer K on (None: no cut)
    attn: Tensor | None = None  # [B, T0] attention paid to each input at layer K-1 (rows' mean)
    prefill: bool = True

    @property
    def n0(self) -> int:
        return self.image0.shape[1]


class VlmSieve:
    """``with VlmSieve(model, method) as s: model.generate(...)``; then ``s.kept`` / ``s.counts``."""

    def __init__(self, model: nn.Module, method: VlmMethod) -> None:
        parts = compat.vlm_parts(model)
        if parts is None:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} is not a LLaVA-style vision-language model (a language model under it and "
                "an image_token_id in its config): use e.g. transformers' LlavaForConditionalGeneration"
            )
        self.model, self.method = model, method
        self.lm, self.image_token = parts
        self.layers = compat.decoder_layers(model)
        self.late = method.late(len(self.layers))
        if self.late is not None and not 1 <= self.late[0] < len(self.layers):
            raise BudgetError(
                f"{method.id} cuts at layer {self.late[0]}, outside the LLM's layers 1..{len(self.layers) - 1}"
            )
        self.prompt: _Prompt | None = None
        self._handles: list[Any] = []
        self._attn: list[tuple[Any, str]] = []
        self._ids: Tensor | None = None
        self._calls = self._observed = 0

    def __enter__(self) -> VlmSieve:
        self._handles.append(self.model.register_forward_pre_hook(self._start, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._finish, with_kwargs=True))
        self._handles.append(self.lm.register_forward_pre_hook(self._lm_hook, with_kwargs=True))
        if self.late is not None:
            hooks.register()
            self._attn = compat.set_attention(self.lm, hooks.ATTENTION)
            for i in range(self.late[0], len(self.layers)):
                self._handles.append(self.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        compat.restore_attention(self._attn)
        self._attn = []
        hooks.observe("vlm", None)

    # ---- what happened
    @property
    def kept(self) -> Tensor:
        """[B, T_kept] prompt positions that reached the last layer."""
        p = self._need_prompt()
        base = p.kept0 if p.kept0 is not None else torch.arange(p.length).expand(p.image0.shape[0], -1)
        return base if p.rows is None else base.gather(1, p.rows)

    @property
    def counts(self) -> dict[str, int]:
        """Image tokens in the prompt, entering the LLM, and from layer K on."""
        p = self._need_prompt()
        n0 = int(p.image0[0].sum())
        late = n0 if p.rows is None else int(p.image0[0].gather(0, p.rows[0]).sum())
        return {"image_tokens": p.n_image, "before_llm": n0, "after_layer_k": late}

    def _need_prompt(self) -> _Prompt:
        if self.prompt is None:
            raise NotEngagedError("no prompt with image tokens ran inside this VlmSieve: call the model first")
        return self.prompt

    # ---- hooks
    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._ids = kwargs.get("input_ids", args[0] if args else None)
        if self._ids is None and kwargs.get("pixel_values") is not None:
            raise UnsupportedArchitectureError(
                "pass input_ids, not inputs_embeds: tokensieve finds the image tokens by their placeholder id"
            )
        self._calls = self._observed = 0
        hooks.observe("vlm", self._attend)

    def _finish(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hooks.observe("vlm", None)
        p = self.prompt
        if p is None or not p.prefill or self.late is None:
            return
        want = len(self.layers) - self.late[0]
        if self._observed != 1 or self._calls != want:
            raise compat.not_engaged(
                f"vision-language pruning ({self.method.id})", self.model,
                f"{self._observed} of 1 attention observations and {self._calls} of {want} decoder-layer calls "
                "reached tokensieve's hooks",
            )  # fmt: skip
        p.prefill = False

    def _lm_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        embeds = kwargs.get(compat.LM_EMBEDS_ARG)
        if embeds is None:
            return None
        cache = compat.given_cache(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            return self._prompt_pass(embeds, args, kwargs)
        return self._step(embeds, past, args, kwargs)

    def _prompt_pass(self, embeds: Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self.prompt = None
        ids = self._ids
        if ids is None or ids.shape != embeds.shape[:2]:
            return None
        image = ids.to(embeds.device) == self.image_token
        if not bool(image.any()):
            return None  # a text-only prompt: nothing to prune
        b, t = image.shape
        n = int(image[0].sum())
        if not bool((image.sum(1) == n).all()):
            raise BatchError("every row of the batch must hold the same number of image tokens (one image each)")
        mask = kwargs.get(compat.LM_MASK_ARG)
        if isinstance(mask, Tensor) and mask.dim() != 2:
            raise PaddingError("pass a 2-D attention mask (batch x tokens): image pruning builds the 4-D one itself")
        valid = mask.bool() if isinstance(mask, Tensor) else None
        img_pos, txt_pos = image.nonzero()[:, 1].view(b, n), (~image).nonzero()[:, 1].view(b, t - n)
        d = embeds.shape[-1]
        text_valid = valid.gather(1, txt_pos) if valid is not None else torch.ones_like(txt_pos, dtype=torch.bool)
        inputs = Inputs(
            embeds.gather(1, img_pos[..., None].expand(-1, -1, d)),
            embeds.gather(1, txt_pos[..., None].expand(-1, -1, d)),
            text_valid,
        )
        idx = self.method.before_llm(inputs)
        if idx is None or idx.shape[1] >= n:
            self.prompt = _Prompt(t, n, None, image, valid)
            return None  # nothing dropped before the LLM: its arguments untouched (bit-exact)
        kept0 = torch.cat([txt_pos, img_pos.gather(1, idx)], 1).sort(1).values
        kwargs[compat.LM_EMBEDS_ARG] = embeds.gather(1, kept0[..., None].expand(-1, -1, d))
        if valid is not None:
            kwargs[compat.LM_MASK_ARG] = mask.gather(1, kept0)
        positions = kwargs.get(compat.LM_POSITIONS_ARG)
        if positions is None:
            positions = torch.arange(t, device=embeds.device)[None]
        kwargs[compat.LM_POSITIONS_ARG] = positions.expand(b, -1).gather(1, kept0)
        if kwargs.get(compat.CACHE_POSITION_ARG) is not None:
            kwargs[compat.CACHE_POSITION_ARG] = torch.arange(kept0.shape[1], device=embeds.device)
        self.prompt = _Prompt(t, n, kept0, image.gather(1, kept0), None if valid is None else valid.gather(1, kept0))
        return args, kwargs

    def _step(self, embeds: Tensor, past: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        ids, q = self._ids, embeds.shape[1]
        if q > 1 and ids is not None and bool((ids == self.image_token).any()):
            raise UnsupportedArchitectureError(
                "image tokens arrived after a non-empty cache: run the prompt with the image from an empty cache"
            )
        p = self.prompt
        if p is None:
            return None
        p.prefill = False
        if p.kept0 is None:
            return None
        b = embeds.shape[0]
        gone = p.length - p.n0  # prompt tokens never cached
        mask = kwargs.get(compat.LM_MASK_ARG)
        if isinstance(mask, Tensor) and mask.dim() == 2:
            if mask.shape[1] != past + gone + q:
                raise PaddingError(
                    f"the attention mask covers {mask.shape[1]} tokens, but the prompt and the generated tokens "
                    f"are {past + gone + q}: extend the prompt's mask by one column per new token"
                )
            kwargs[compat.LM_MASK_ARG] = torch.cat([mask.gather(1, p.kept0), mask[:, p.length :]], 1)
        if kwargs.get(compat.LM_POSITIONS_ARG) is None:
            pos = torch.arange(past + gone, past + gone + q, device=embeds.device)
            kwargs[compat.LM_POSITIONS_ARG] = pos[None].expand(b, -1)
        if kwargs.get(compat.CACHE_POSITION_ARG) is not None:
            kwargs[compat.CACHE_POSITION_ARG] = torch.arange(past, past + q, device=embeds.device)
        return args, kwargs

    def _layer_hook(self, i: int):
        def hook(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            p = self.prompt
            if p is None:
                return None
            if p.prefill:
                self._calls += 1
                if i == self.late[0]:
                    self._cut(p)
                if p.rows is None:
                    return None
                hidden = args[0] if args else kwargs["hidden_states"]
                if i == self.late[0]:
                    hidden = hidden.gather(1, p.rows[..., None].expand(-1, -1, hidden.shape[-1]))
                rest = {k: compat.take_tokens(v, p.rows, p.n0) for k, v in kwargs.items() if k != "hidden_states"}
                return (hidden, *args[1:]), rest
            mask = kwargs.get(compat.LAYER_MASK_ARG)
            if p.rows is None or not isinstance(mask, Tensor):
                return None  # no mask: every cached key is visible to the new token
            new = torch.arange(p.n0, mask.shape[-1], device=mask.device).expand(p.rows.shape[0], -1)
            kwargs[compat.LAYER_MASK_ARG] = compat.take_keys(mask, torch.cat([p.rows, new], 1))
            return args, kwargs

        return hook

    def _cut(self, p: _Prompt) -> None:
        if p.attn is None:
            raise compat.not_engaged(
                f"vision-language pruning ({self.method.id})", self.model,
                f"layer {self.late[0] - 1}'s attention never reached tokensieve's attention function",
            )  # fmt: skip
        b, n0 = p.image0.shape
        n = int(p.image0[0].sum())
        k = min(n, max(0, math.ceil(self.late[1] * n - 1e-9)))
        if k >= n:
            return
        img_pos, txt_pos = p.image0.nonzero()[:, 1].view(b, n), (~p.image0).nonzero()[:, 1].view(b, n0 - n)
        best = p.attn.gather(1, img_pos).topk(k, dim=1).indices
        p.rows = torch.cat([txt_pos, img_pos.gather(1, best)], 1).sort(1).values

    def _attend(self, module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, **kw: Any):
        """The ``vlm`` observer: record what the cut needs, then transformers' SDPA unchanged."""
        self.observe(module, query, key, kw)
        return compat.sdpa(module, query, key, value, mask, **kw)

    def observe(self, module: nn.Module, query: Tensor, key: Tensor, kw: dict) -> None:
        """At layer K-1 of a prompt pass: the attention of the chosen rows to every key, mean over heads."""
        p = self.prompt
        if p is None or not p.prefill or self.late is None or compat.attention_layer_index(module) != self.late[0] - 1:
            return
        n0 = p.n0
        if query.shape[2] != n0 or key.shape[2] != n0:
            return
        last_image = int(torch.where(p.image0, torch.arange(n0, device=key.device), -1).max(1).values.max())
        after = n0 - 1 - last_image  # text tokens after the image in every row
        first = n0 - max(1, after) if self.method.rows == "text" else n0 - 1
        rows = torch.arange(first, n0, device=key.device)
        scale = float(kw.get("scaling") or query.shape[-1] ** -0.5)
        q = group_queries(query[:, :, first:].float(), key.shape[1])
        probs = attention_probs(q, key.float(), rows, p.valid0, scale)  # [B, Hkv, G, rows, T0]
        p.attn = probs.mean((1, 2, 3))
        self._observed += 1
