"""The one place that knows transformers internals (anything not public, stable API).

Each item says in one line what it relies on. Code elsewhere calls these helpers instead of
touching transformers' private names, so a transformers release that moves one breaks here only.
Tested range: see ``TESTED_TRANSFORMERS`` (the floor and the newest release, both run in CI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch
import transformers
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tokensieve.errors import EngagementError

TRANSFORMERS_VERSION: str = transformers.__version__
# the floor and the newest release the test suite runs on (CI runs both; pyproject and README say the same)
TESTED_TRANSFORMERS: tuple[str, str] = ("5.4.0", "5.24.0")

# --- the cache argument -------------------------------------------------------------------------------------------
_CACHE_NAMES = ("cache", "past_key_values")


@functools.cache
def _cache_arg_of(cls: type) -> str:
    # transformers 5.24 renamed `past_key_values=` to `cache=` on forward (the old name warns, then goes);
    # earlier releases silently ignore `cache=` in forward, so the name is detected, never assumed.
    params = inspect.signature(cls.forward).parameters
    for name in _CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"{cls.__name__}.forward takes neither `cache` nor `past_key_values`")


def cache_arg(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` (and `generate`) takes a KV cache on this transformers."""
    return _cache_arg_of(type(model))


def with_cache(model: torch.nn.Module, cache: Any, **kwargs: Any) -> dict[str, Any]:
    """`kwargs` plus the cache under the name this model's forward takes it: `model(**with_cache(m, c, ...))`."""
    return {**kwargs, cache_arg(model): cache}


def given_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a model-level call was given under either name (a caller's old name still reaches forward)."""
    return next((kwargs[n] for n in _CACHE_NAMES if kwargs.get(n) is not None), None)


def call_cache(module: torch.nn.Module, kwargs: dict[str, Any]) -> Any:
    """The cache a forward (pre-)hook of ``module`` sees in its call kwargs, under the name ``module.forward``
    takes (decoder layers follow the same rename as the model: `cache=` from 5.24); None if it takes neither."""
    try:
        return kwargs.get(_cache_arg_of(type(module)))
    except TypeError:
        return None


# --- the decoder-layer call convention ----------------------------------------------------------------------------
# Relies on: decoder layers are called as `layer(hidden_states, attention_mask=..., position_ids=...,
# position_embeddings=(cos, sin), cache=..., ...)`, hidden states positional or as `hidden_states=`, the mask a
# 4-D [B, 1, Q, K] tensor (or None) and every other per-token argument with its token axis at 1 (0 when 1-D).
def layer_hidden(args: tuple, kwargs: dict[str, Any]) -> Any:
    """The hidden states a decoder layer is called with (positional, or popped from ``kwargs``)."""
    return args[0] if args else kwargs.pop("hidden_states")


def layer_call(hidden: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """What a forward pre-hook returns to call the layer on ``hidden`` instead, everything else as given."""
    return (hidden, *args[1:]), kwargs


LAYER_MASK_ARG = "attention_mask"  # the 4-D mask's keyword in a decoder layer's call


# --- cache layers --------------------------------------------------------------------------------------------------
# Relies on: `DynamicLayer` keeps `keys`/`values` [B, H, T, D] and `is_initialized`, its `update(k, v)` appends by
# concatenation, and layers may be subclassed; `DynamicSlidingWindowLayer` is the sliding-window layer.
BaseLayer = DynamicLayer
SlidingLayer = DynamicSlidingWindowLayer


def dynamic_update(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`DynamicLayer.update` itself, skipping any override in between (an append of new slots at the end)."""
    return DynamicLayer.update(layer, keys, values)


def mark_initialized(layer: DynamicLayer, keys: torch.Tensor) -> None:
    # Relies on: a layer's `is_initialized`, `device` and (before 5.24 only) `dtype` mirror its tensors; setting all
    # three keeps every release's methods working on a layer whose tensors were set directly.
    layer.is_initialized, layer.device, layer.dtype = True, keys.device, keys.dtype


def adopt_layer(mine: DynamicLayer, theirs: DynamicLayer, names: tuple[str, ...] = ()) -> None:
    """Make ``mine`` hold ``theirs``'s tensors (shared): keys, values, ``names`` and the mirrored attributes."""
    for name in ("keys", "values", "is_initialized", *names):
        setattr(mine, name, getattr(theirs, name))
    if theirs.is_initialized:  # 5.24's lazy_initialization no longer sets `dtype`: derive both from the tensors
        mark_initialized(mine, theirs.keys)


# --- caches --------------------------------------------------------------------------------------------------------
# Relies on: `get_layer_types_and_kwargs(text_config)` gives each layer's type and its layer's constructor kwargs,
# and `Cache.__init__(layers=...)` takes prebuilt layers (DynamicCache's own __init__ would build its own).
def layer_types_and_kwargs(config: Any) -> tuple[list[str], list[dict]]:
    from transformers import cache_utils

    fn = getattr(cache_utils, "get_layer_types_and_kwargs", None)
    if fn is not None:
        return fn(config)
    # older releases: read the types off the layers DynamicCache itself builds for this config (public API)
    types, kwargs = [], []
    for layer in DynamicCache(config=config).layers:
        sliding = isinstance(layer, DynamicSlidingWindowLayer)
        types.append("sliding_attention" if sliding else "full_attention")
        kwargs.append({"sliding_window": layer.sliding_window} if sliding else {})
    return types, kwargs


def init_cache_layers(cache: Cache, layers: list) -> None:
    Cache.__init__(cache, layers=layers)


def set_cache_layer(cache: Cache, i: int, layer: Any) -> None:
    # Relies on: `cache.layers` is a plain list indexed by layer_idx that the cache reads on every update.
    old = cache.layers[i] if i < len(cache.layers) else None
    for name in ENGAGEMENT_COUNTS:  # a layer replaced by another layout keeps what engagement checks counted
        setattr(layer, name, max(getattr(layer, name, 0), getattr(old, name, 0)))
    cache.layers[i] = layer


ENGAGEMENT_COUNTS = ("n_updates", "n_attends")  # set by core.observe.hooks: updates bound, attention calls received


# `PreTrainedConfig` is the name from 5.x; `PretrainedConfig` is the legacy alias (kept for older releases).
PreTrainedConfig = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig


# --- attention -----------------------------------------------------------------------------------------------------
# Relies on: `sdpa_attention_forward(module, q, k, v, mask, **kw)` is the SDPA path models call, `sdpa_mask` builds
# SDPA's boolean masks, both interfaces take `register(name, fn)`, a model sets `_supports_attention_backend` when
# its attention goes through the interface, and `config._attn_implementation` names the one in use.
sdpa = sdpa_attention_forward
SDPA_MASK = sdpa_mask


def register_attention(name: str, attention: Any, mask: Any = sdpa_mask) -> None:
    transformers.AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)


def supports_attention_backend(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "_supports_attention_backend", False))


def attn_implementation(model: torch.nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


# Relies on: an attention layer calls `cache.update(...)` and then its attention function right away, on the same
# thread, with the keys `update` returned: `core.observe.hooks` binds the layer in `update` and picks it up there.
# `check_engaged` below turns a break of that order (attention never reached us) into an error.


# --- engagement ----------------------------------------------------------------------------------------------------
def not_engaged(what: str, model: Any, detail: str) -> EngagementError:
    """The error for a mechanism that was attached but did nothing: it names the mechanism, the model class and
    the transformers version, so a release that renamed something shows up as an error, not as a silent no-op."""
    name = type(model).__name__ if model is not None else "the model"
    return EngagementError(
        f"{what} did not engage on {name} with transformers {TRANSFORMERS_VERSION}: {detail}; tokensieve is tested "
        f"on transformers {TESTED_TRANSFORMERS[0]}..{TESTED_TRANSFORMERS[1]} (pin one of those or report the model)"
    )


# --- question-unseen scores (issue 12) -------------------------------------------------------------------
def rope_inv_freq(model: torch.nn.Module) -> torch.Tensor | None:
    """The rotary inverse frequencies [D/2] of a model, or None: relies on HF's rotary modules keeping them in a
    buffer named `inv_freq` (the first one found; Gemma-3's local/global layers may differ)."""
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            return buf.detach().float().cpu()
    return None


# --- vision (src/tokensieve/vision) ---

VISION_ATTENTION = "tokensieve_vision"


def register_vision_attention(fn: Any) -> None:
    # relies on AttentionInterface / AttentionMaskInterface.register taking any name (mask: plain SDPA masks)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VISION_ATTENTION, fn)
    AttentionMaskInterface.register(VISION_ATTENTION, sdpa_mask)


# --- vision and training (tokensieve.vision, tokensieve.train) ---
def sdpa_attention(module: torch.nn.Module, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
    """transformers' own SDPA attention function (integrations.sdpa_attention.sdpa_attention_forward)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def set_attention(model: torch.nn.Module, name: str) -> list[tuple[Any, str]]:
    """Switch every config in `model` to attention `name`; returns what to pass to `restore_attention`."""
    # relies on attention modules reading `config._attn_implementation` at call time (all ViT-family models do)
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    before = [(c, c._attn_implementation) for c in seen.values()]
    for config in seen.values():
        config._attn_implementation = name
    return before


def restore_attention(before: list[tuple[Any, str]]) -> None:
    for config, name in before:
        config._attn_implementation = name


def vision_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    # relies on a ViT encoder keeping its blocks in its longest nn.ModuleList, each called as layer(hidden_states, ...)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise TypeError(f"{type(model).__name__} has no list of encoder layers")
    return max(lists, key=len)


def takes_interpolate_pos_encoding(model: torch.nn.Module) -> bool:
    # relies on ViT/CLIP/SigLIP forwards naming the flag `interpolate_pos_encoding` (Dinov2 always interpolates)
    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters


def attention_layer_index(module: torch.nn.Module) -> int | None:
    """The decoder layer an attention module belongs to: its ``layer_idx`` attribute (Llama-style modules)."""
    return getattr(module, "layer_idx", None)


# --- quantize (weight quantization, tokensieve.quantize) ---


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, in order."""
    # relies on: `get_decoder()` returning the base model, which keeps its blocks as `.layers`
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{type(model).__name__} keeps no `.layers` list in its decoder")
    return layers


@contextlib.contextmanager
def record_layer_calls(model: torch.nn.Module) -> Iterator[list[list[tuple[torch.Tensor, dict[str, Any]]]]]:
    """Record, per decoder layer, each call's hidden-state input and keyword arguments during a forward."""
    # relies on: decoder layers taking the hidden states first (positional or `hidden_states=`) and the rest
    # (mask, position embeddings of that layer's type, position ids) as keywords, as in transformers 4.5x-5.x
    layers = decoder_layers(model)
    calls: list[list[tuple[torch.Tensor, dict[str, Any]]]] = [[] for _ in layers]

    def hook(i: int):
        def pre(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            kw = dict(kwargs)
            hidden = args[0] if args else kw.pop("hidden_states")
            calls[i].append((hidden.detach(), kw))

        return pre

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def call_layer(layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run one decoder layer on recorded arguments and return its output hidden states."""
    # relies on: a decoder layer returning the hidden states (a tensor in 5.x, the first item of a tuple before)
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def logits_from_hidden(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A causal LM's logits for final hidden states (so callers can take the head in slices)."""
    # relies on: CausalLM heads computing `lm_head(h)`, then Gemma-style `final_logit_softcapping` if set
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


# --- vision, round 2: merging inside a ViT block (tokensieve.vision) ---
_MLP_NORMS = ("norm2", "layernorm_after", "layer_norm2")  # Dinov2 / ViT, DeiT / CLIP, SigLIP


@dataclasses.dataclass
class MlpBranch:
    norm: torch.nn.Module  # the norm that feeds the MLP: its input is the residual stream h
    mlp: torch.nn.Module  # the MLP, or (residual_inside) its last module, called as mlp(y, h) and adding h itself
    residual_inside: bool


def vision_mlp_branch(layer: torch.nn.Module) -> MlpBranch | None:
    """Where a ViT block's MLP branch starts and ends, or None when the block has neither part."""
    # relies on pre-norm ViT-family blocks computing `h = x + attn(norm1(x)); out = h + mlp(norm2(h))`, with the
    # second norm named as in _MLP_NORMS and the MLP `mlp` (transformers 5.24's ViT, DeiT, Dinov2, CLIP, SigLIP),
    # anything elementwise after `mlp` (LayerScale, dropout, drop-path) commuting with a per-token copy; or, as
    # ViT / DeiT up to 5.4, `intermediate` then `output(y, h)`, which adds the residual h inside
    norm = next((getattr(layer, n) for n in _MLP_NORMS if isinstance(getattr(layer, n, None), torch.nn.Module)), None)
    if norm is None:
        return None
    if isinstance(getattr(layer, "mlp", None), torch.nn.Module):
        return MlpBranch(norm, layer.mlp, False)
    inside = getattr(layer, "output", None)
    if isinstance(getattr(layer, "intermediate", None), torch.nn.Module) and isinstance(inside, torch.nn.Module):
        return MlpBranch(norm, inside, True)
    return None


def with_residual(args: tuple, kwargs: dict[str, Any], residual: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    """The call of a residual-inside MLP output (``output(y, h)``, ViT / DeiT up to 5.4) with ``h`` replaced."""
    if len(args) > 1:
        return (args[0], residual, *args[2:]), kwargs
    return args, {**kwargs, "input_tensor": residual}


def call_residual(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[1] if len(args) > 1 else kwargs["input_tensor"]


def replace_layer_output(output: Any, hidden: torch.Tensor) -> Any:
    """A layer's output with its hidden states replaced (a tensor in 5.x, the first item of a tuple before)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def layer_output_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# --- vision-language models (tokensieve.vlm) ---
VLM_ATTENTION = "tokensieve_vlm"
# the keywords LLaVA-style models hand their language model (`self.language_model(inputs_embeds=..., ...)`)
LM_EMBEDS_ARG, LM_MASK_ARG, LM_POSITIONS_ARG = "inputs_embeds", "attention_mask", "position_ids"
# relies on: releases before 5.24 also pass `cache_position` (each new token's slot in the cache); 5.24 dropped it
CACHE_POSITION_ARG = "cache_position"


def vlm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, int] | None:
    """A LLaVA-style model's language model and image-token id, or None for a model without both."""
    # relies on: `get_decoder()` finding `language_model` under LLaVA-style models (through `base_model`) and the
    # config naming the placeholder `image_token_id` (`image_token_index` before 5.x)
    config = getattr(model, "config", None)
    token = getattr(config, "image_token_id", None)
    token = getattr(config, "image_token_index", None) if token is None else token
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if token is None or decoder is None or decoder is model or not hasattr(decoder, "layers"):
        return None
    return decoder, int(token)


def take_tokens(x: Any, rows: torch.Tensor, n: int) -> Any:
    """A per-token layer argument restricted to positions ``rows`` [B, k] of ``n`` (the decoder-layer call
    convention above): token axis 1 (broadcast batch expanded), a 4-D [B, 1, n, n] mask on both last axes, a
    1-D ``cache_position`` to its first k slots (the kept tokens fill the cache from its start), tuples
    element-wise; anything else as is."""
    if isinstance(x, tuple | list):
        return type(x)(take_tokens(v, rows, n) for v in x)
    if not isinstance(x, torch.Tensor):
        return x
    b, k = rows.shape
    if x.dim() == 4 and x.shape[-2:] == (n, n):
        x = x.expand(b, *x.shape[1:])
        x = x.gather(2, rows[:, None, :, None].expand(-1, x.shape[1], -1, n))
        return x.gather(3, rows[:, None, None, :].expand(-1, x.shape[1], k, -1))
    if x.dim() >= 2 and x.shape[1] == n:
        x = x.expand(b, *x.shape[1:])
        return x.gather(1, rows.view(b, k, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
    if x.dim() == 1 and x.shape[0] == n:
        return x[:k]
    return x


def take_keys(mask: Any, cols: torch.Tensor) -> Any:
    """A 4-D [B, 1, q, K] mask restricted to key columns ``cols`` [B, K'] (None stays None)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        return mask
    mask = mask.expand(cols.shape[0], *mask.shape[1:])
    return mask.gather(3, cols[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1))


# --- GGUF tensor layout (the GGUF writer inverts what transformers' GGUF loader does) ----------------------------
@dataclasses.dataclass(frozen=True)
class GgufTensor:
    """Where a parameter lives in a GGUF file: the loader reads ``hf = gguf[rows] + offset``."""

    name: str
    rows: Any  # numpy int array, or None for the identity
    offset: float


def gguf_layout(model: torch.nn.Module, arch: str) -> dict[str, GgufTensor]:
    """For each state-dict name that GGUF architecture ``arch``'s naming covers (gguf-py's tensor map): its GGUF
    tensor name and the row order and constant offset transformers' loader applies (probed on small stand-ins:
    Llama's q/k head permutation, Gemma's ``1 + w`` norms), so the writer needs no per-model branch. Relies on
    ``modeling_gguf_pytorch_utils``: ``TENSOR_PROCESSORS`` and ``TensorProcessor.process`` reading the config's
    ``num_attention_heads`` / ``num_key_value_heads``."""
    import gguf
    import numpy as np
    from transformers import modeling_gguf_pytorch_utils as g

    from tokensieve.errors import UnsupportedArchitectureError

    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise UnsupportedArchitectureError(f"GGUF architecture {arch!r} is unknown to gguf-py: cannot export")
    config = model.config.to_dict()
    processor = g.TENSOR_PROCESSORS.get(arch, g.TensorProcessor)(config=config)
    parsed = {"config": config}
    names = gguf.get_tensor_name_map(archs[arch], model.config.num_hidden_layers)
    to_hf = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is not None:
            to_hf[f"{gguf_name}.{suffix}"] = hf_name
    state = model.state_dict()
    rng = np.random.default_rng(0)
    out: dict[str, GgufTensor] = {}
    for gguf_name, hf_name in to_hf.items():
        if hf_name not in state:
            continue
        shape = (state[hf_name].shape[0],) + ((2,) if state[hf_name].dim() > 1 else ())

        def run(x: Any, gguf_name: str = gguf_name) -> Any:
            r = processor.process(weights=x, name=gguf_name, tensor_key_mapping=to_hf, parsed_parameters=parsed)
            if r.name != gguf_name or r.weights.shape != x.shape:
                raise UnsupportedArchitectureError(f"transformers' GGUF loader reshapes {gguf_name}: not exportable")
            return np.asarray(r.weights, dtype=np.float64)

        offset = run(np.zeros(shape, np.float32))
        index = np.broadcast_to(np.arange(shape[0], dtype=np.float32).reshape(-1, *([1] * (len(shape) - 1))), shape)
        rows = np.rint(run(np.ascontiguousarray(index)) - offset).astype(np.int64).reshape(shape[0], -1)[:, 0]
        probe = rng.standard_normal(shape).astype(np.float32)
        if (
            np.ptp(offset) != 0
            or not np.array_equal(np.sort(rows), np.arange(shape[0]))
            or not np.allclose(run(probe), probe[rows] + offset.flat[0], atol=1e-6)
        ):
            raise UnsupportedArchitectureError(
                f"transformers' GGUF loader transforms {gguf_name} beyond a row order and an offset: not exportable"
            )
        identity = np.array_equal(rows, np.arange(shape[0]))
        out[hf_name] = GgufTensor(gguf_name, None if identity else rows, float(offset.flat[0]))
    return out
