"""No silent no-ops: every mechanism that attaches to a model engages, or raises naming itself, the model class and
the transformers version. The failures are provoked the way a transformers release would: a renamed argument."""

from __future__ import annotations

import pytest
import torch
import transformers

import tokensieve as ts
from conftest import ids, make_model
from tokensieve import compat
from tokensieve.compat import with_cache
from tokensieve.core.observe import hooks
from tokensieve.errors import EngagementError, TokenSieveError


def _old_layer_hook(module, kwargs):
    return kwargs.get("past_key_values")  # what prune/engine.py read before the 5.24 rename


def _renamed(monkeypatch) -> None:
    """As if the model's forward had renamed its cache argument: ours becomes an unknown kwarg it ignores."""
    monkeypatch.setattr(compat.cache, "_cache_arg_of", lambda cls: "kv_cache_renamed")


def _says_who(err: Exception, what: str, model) -> None:
    msg = str(err)
    assert what in msg and type(model).__name__ in msg and transformers.__version__ in msg


def test_cache_arg_is_detected_from_the_signature():
    model = make_model("llama")
    params = type(model).forward.__wrapped__ if hasattr(type(model).forward, "__wrapped__") else type(model).forward
    import inspect

    names = inspect.signature(params).parameters
    assert compat.cache_arg(model) == ("cache" if "cache" in names else "past_key_values")
    layer = model.model.layers[0]
    assert compat.call_cache(layer, {compat.cache_arg(model): "x"}) == "x"  # layers follow the same rename


def test_prune_engages_on_every_layer():
    model = make_model("llama")
    with ts.prune(model, "lazyllm", keep=(0.75, 0.5, 0.25)) as cache, torch.inference_mode():
        model(ids(0, 40), **with_cache(model, cache))
        alive = cache.engine.alive_per_layer
    assert len(alive) == 3 and alive[0] == 40 and alive[-1] < 40  # every layer ran, later ones on fewer tokens
    assert cache.layers[2].n_held < 40


def test_prune_raises_when_the_layer_hook_misses_the_cache(monkeypatch):
    """The pre-5.24 hook against this transformers (a mocked rename on older ones): an error, not a normal run."""
    monkeypatch.setattr(compat, "call_cache", _old_layer_hook)
    model = make_model("llama")
    if compat.cache_arg(model) == "past_key_values":  # an older transformers: mock the rename in the layers too
        monkeypatch.setattr(compat, "call_cache", lambda module, kw: kw.get("cache"))
    with ts.prune(model, "lazyllm") as cache, torch.inference_mode(), pytest.raises(EngagementError) as err:
        model(ids(1, 40), **with_cache(model, cache))
    _says_who(err.value, "lazyllm", model)
    assert "0 of 3 decoder layers" in str(err.value)


def test_compress_raises_when_the_model_ignores_the_cache(monkeypatch):
    model = make_model("qwen2")
    _renamed(monkeypatch)
    with pytest.raises(EngagementError) as err:
        ts.compress(model, None, ids(2, 30), "snapkv", keep=0.5)
    _says_who(err.value, "snapkv", model)


def test_compress_raises_when_attention_bypasses_tokensieve(monkeypatch):
    """An architecture whose attention does not go through the interface: the layers update, nobody attends."""
    model = make_model("llama")
    ts.prepare(model)
    monkeypatch.setattr(hooks, "prepare", lambda m: m)
    monkeypatch.setattr("tokensieve.kv.pipeline.prepare", lambda m: m)
    model.set_attn_implementation("sdpa")
    with pytest.raises(TokenSieveError):  # the bind's stale check or the engagement check, whichever sees it first
        ts.compress(model, None, ids(3, 30), "h2o", keep=0.5)


@pytest.mark.parametrize("method", ["snapkv", "zerotuning"])
def test_compress_engages_every_layer(method):
    model = make_model("llama")
    c = ts.compress(model, None, ids(4, 40), method, keep=0.25 if method == "snapkv" else 1.0)
    for layer in c.cache.sieve_layers:
        assert layer.n_updates == layer.n_attends == 1 and layer.on_attention is None
    if method == "snapkv":
        assert all(t == 10 for t in c.cache.tokens_held())


def test_prefill_raises_when_the_model_ignores_the_cache(monkeypatch):
    """Calibration runs go through prefill: the same check covers them."""
    model = make_model("llama")
    _renamed(monkeypatch)
    with pytest.raises(EngagementError) as err:
        ts.prefill(model, None, ids(5, 30), methods=["h2o"])
    _says_who(err.value, "prefill", model)


class _Tok:
    """The least a tokenizer must do for ``decode``: ids in, text out."""

    pad_token_id, eos_token_id, chat_template = 0, 1, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [3 + ord(c) % 100 for c in text]}

    def encode(self, text, add_special_tokens=True):
        return self(text)["input_ids"]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize(
    "method, kw", [("h2o", {"budget": 12}), ("quest", {"read": 0.25}), ("lazyllm", {"keep": (0.75, 0.5, 0.25)})]
)
def test_decode_engages_and_raises_when_renamed(method, kw, monkeypatch):
    from tokensieve.kv import decode

    model = make_model("llama")
    tok = _Tok()
    text = "the context that is long enough " * 2
    ans = decode(model, tok, text, "q?", method, max_new_tokens=3, **kw)
    extra = ans.stats.extra
    if method == "h2o":
        assert extra["peak_tokens_held"] <= 12 + 1  # the budget, plus the one new slot a step holds before evicting
    elif method == "quest":
        assert extra["steps"] > 0 and 0 < extra["read"] <= 0.25 + 1e-6
    else:
        alive = extra["alive_per_layer"]
        assert alive[0] > alive[-1] and len(alive) == 3
    # what a release that calls its layers differently would do: the pruning hook misses the cache, or the
    # attention no longer comes through tokensieve's (generate itself rejects an unknown cache kwarg)
    if method == "lazyllm":
        monkeypatch.setattr(compat, "call_cache", lambda module, kw: None)
    else:
        monkeypatch.setattr(hooks, "sieve_attention", lambda m, q, k, v, mask, **a: hooks.sdpa(m, q, k, v, mask, **a))
    try:
        with pytest.raises(EngagementError) as err:
            decode(model, tok, text, "q?", method, max_new_tokens=3, **kw)
    finally:
        monkeypatch.undo()
        hooks.register()  # the real attention back in transformers' registry
    _says_who(err.value, method, model)
