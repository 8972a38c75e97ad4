"""``block`` (kv/blockwise.py): chunked prefill under a budget. A layer never holds more than budget + block, the
positions of later tokens are those of a full prefill, nothing evicted means the plain model's cache, and
methods that cannot judge held tokens from one block are refused."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import make_model, twin
from tokensieve import compat
from tokensieve.errors import BatchError, ParameterError
from tokensieve.kv import compress_blocks
from tokensieve.kv.cache import SieveLayer


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 100, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["keydiff", "snapkv", "knorm"])
def test_never_holds_more_than_budget_plus_block(method, monkeypatch):
    model = make_model("llama", seed=1)
    held: list[int] = []
    attend = SieveLayer.attend

    def spy(self, module, query, key, value, mask, **kwargs):
        held.append(self.n_held)  # what the layer holds while it attends: kept tokens + the new block
        return attend(self, module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(SieveLayer, "attend", spy)
    c = compress_blocks(model, None, _ids(100), method, budget=24, block=32)
    assert max(held) <= 24 + 32 and max(held) == c.stats.peak_tokens_held == 24 + 32
    assert all(layer.n_held == 24 for layer in c.cache.sieve_layers)
    assert all(layer.cumulative_length == 100 for layer in c.cache.sieve_layers)
    assert c.stats.kv_bytes == pytest.approx(c.stats.kv_bytes_full * 24 / 100, rel=1e-6)


def test_nothing_evicted_is_the_plain_models_cache_and_positions_continue():
    model = make_model("llama", seed=2)
    ref = twin(model)
    ids = _ids(60, 1)
    c = compress_blocks(model, None, ids, "keydiff", keep=1.0, block=16)  # nothing is evicted
    plain = DynamicCache(config=ref.config)
    with torch.no_grad():
        ref(ids, use_cache=True, **compat.with_cache(ref, plain))
    for layer, (k, v) in zip(c.cache.sieve_layers, [(lyr.keys, lyr.values) for lyr in plain.layers], strict=True):
        torch.testing.assert_close(layer.keys, k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.values, v, atol=1e-5, rtol=1e-5)
    nxt = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        want = ref(torch.cat([ids, nxt], 1)).logits[:, -3:]
        got = model(nxt, **compat.with_cache(model, c.cache.fork())).logits  # positions continue at 60
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_refuses_what_one_block_cannot_judge():
    model = make_model("llama", seed=3)
    for method in ("kvzip", "zipcache", "kvzap"):
        with pytest.raises(ParameterError, match="block prefill"):
            compress_blocks(model, None, _ids(40), method, budget=8, block=16)
    with pytest.raises(ParameterError):
        compress_blocks(model, None, _ids(40), "keydiff", budget=8, block=0)
    with pytest.raises(ParameterError, match="window"):
        compress_blocks(model, None, _ids(40), "snapkv", budget=8, block=16)
    with pytest.raises(BatchError):
        compress_blocks(model, None, torch.cat([_ids(40), _ids(40, 1)]), "keydiff", budget=8, block=16)
