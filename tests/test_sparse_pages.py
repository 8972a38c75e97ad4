"""Sparse decoders read in whole pages: every page is read whole or not at all (protected slots aside), and
the layer layout reads one page set for every KV head."""

from __future__ import annotations

import pytest
import torch

import tokensieve as ts
from conftest import make_model
from tokensieve.compat import with_cache
from tokensieve.core.ops.select import protection_mask
from tokensieve.kv import SPARSE, SparseCache, get_sparse
from tokensieve.kv.sparse.paged import PagedRead


@pytest.fixture(scope="module")
def llama():
    return ts.prepare(make_model("llama"))


@pytest.mark.parametrize("method", ["quest", "tokenselect", "hisa", "token_sparse"])
@pytest.mark.parametrize("layout", ["layer", "head"])
def test_pages_are_read_whole(llama, method, layout):
    inner = get_sparse(method, **({"block": 8} if method == "hisa" else {}))
    cache = SparseCache(llama, PagedRead(inner=inner, page=8, layout=layout), read=32)
    seen = []

    def check(layer, idx):
        s = layer.n_held
        protect = protection_mask(None, 1, s, *inner.protected(32))[0]
        for head in range(idx.shape[1]):
            read = {int(i) for i in idx[0, head] if i >= 0 and not protect[i]}
            for p in {i // 8 for i in read}:
                whole = {i for i in range(p * 8, min(s, p * 8 + 8)) if not protect[i]}
                assert whole <= read  # a page is read whole
        if layout == "layer":
            sets = [{int(i) for i in idx[0, h] if i >= 0} for h in range(idx.shape[1])]
            assert all(x == sets[0] for x in sets)
        seen.append(True)

    for layer in cache.sparse_layers:
        layer.on_select = check
    prompt = torch.randint(3, 128, (1, 80), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        llama.generate(
            **with_cache(llama, cache, input_ids=prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        )
    assert seen


def test_every_decoder_is_classified():
    from tokensieve.kv.sparse.paged import SHARED_ACROSS_HEADS

    assert set(SPARSE) >= SHARED_ACROSS_HEADS
