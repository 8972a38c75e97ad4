"""The Triton kernels against their torch references, on the CPU through Triton's interpreter (skipped
where Triton is not installed; tokensieve itself never needs it). The interpreter must be chosen before
Triton is imported, so the checks run in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import optional

optional("triton", "pip install 'tokensieve[gpu]'")


def _checks() -> None:
    from tokensieve.kv.sparse import kernels
    from tokensieve.kv.sparse.select import page_minmax

    for page in (1, 16):
        gen = torch.Generator().manual_seed(page)
        b, hkv, g, d, s = 2, 2, 3, 32, 150
        q = torch.randn(b, hkv * g, d, generator=gen)
        k, v = torch.randn(b, hkv, s, d, generator=gen), torch.randn(b, hkv, s, d, generator=gen)
        n_units = -(-s // page)
        units = torch.stack([torch.randperm(n_units, generator=gen)[: max(3, n_units // 3)] for _ in range(b * hkv)])
        units = units.view(b, hkv, -1).int()
        units[0, 1, :2] = -1  # skipped units
        got = kernels.sparse_decode_attention(q, k, v, units, page, 0.2, splits=3)
        want = kernels.sparse_decode_attention_reference(q.double(), k.double(), v.double(), units, page, 0.2)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
        every = kernels.dense_units(b, hkv, s, page)
        dense = kernels.sparse_decode_attention(q, k, v, every, page, 0.2, splits=2)
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, None], k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), scale=0.2
        )[:, :, 0]
        torch.testing.assert_close(dense, sdpa, atol=1e-5, rtol=1e-4)
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 3, 32, generator=gen), torch.randn(2, 2, 100, 32, generator=gen)
    kmin, kmax = page_minmax(k, None, 16)
    got = kernels.quest_page_scores(q, kmin, kmax, block_p=4)
    torch.testing.assert_close(got, kernels.quest_page_scores_reference(q, kmin, kmax), atol=1e-4, rtol=1e-5)


def test_kernels_match_their_references_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).parent)}
    code = "import test_kernels; test_kernels._checks(); print('ok')"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
