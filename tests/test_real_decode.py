"""Decode-time families on the bundled SmolLM2: pass keys through a sparse decoder and a decode evictor,
prefill pruning that prunes nothing is the plain model, and the `tokensieve decode` command."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import DynamicCache

import tokensieve as ts
from conftest import plain_sdpa
from tokensieve.cli import main
from tokensieve.compat import with_cache
from tokensieve.runtime.passkey import passkey_context

pytestmark = pytest.mark.real


def test_pass_key_sparse_quest_reads_an_eighth(smollm2):
    """Measured (benchmarks/sparse_decode/results/sparse_decode_smollm2.md): Quest at 1/8 answered 6/6 at 1.5k
    tokens."""
    model, tok = smollm2
    results = []
    for depth in (0.1, 0.5, 0.9):
        task = passkey_context(tok, 1500, depth, key="40507")
        ans = ts.decode(
            model, tok, task.context, task.question, "quest", read=0.125, measure=True,
            max_new_tokens=8, answer_prefix=task.answer_prefix,
        )  # fmt: skip
        s = ans.stats.extra
        assert s["attended_fraction"] == pytest.approx(0.125, abs=0.01)
        assert 0.15 < s["read_fraction"] < 0.25 and 0 < s["recall"] <= 1  # page bounds + attended K and V
        results.append((depth, ans.text, task.correct(ans.text)))
    assert sum(ok for *_, ok in results) >= 2, results


def test_pass_key_decode_eviction_h2o_and_composed_with_snapkv(smollm2):
    """H2O holding 512 tokens per head (of ~1.5k), and SnapKV at prefill then TOVA at decode (384)."""
    model, tok = smollm2
    results = []
    for depth, method, kw in [
        (0.1, "h2o", {"budget": 512}),
        (0.9, "h2o", {"budget": 512}),
        (0.5, "tova", {"budget": 384, "prefill": "snapkv"}),
    ]:
        task = passkey_context(tok, 1500, depth, key="88213")
        ans = ts.decode(model, tok, task.context, task.question, method, max_new_tokens=8,
                        answer_prefix=task.answer_prefix, **kw)  # fmt: skip
        assert ans.stats.extra["peak_tokens_held"] <= kw["budget"] + 1
        assert ans.stats.kv_bytes < ans.stats.prompt_tokens * 30 * 2 * 3 * 64 * 4 / 2
        results.append((depth, method, ans.text, task.correct(ans.text)))
    assert sum(ok for *_, ok in results) >= 2, results


def test_real_model_nothing_pruned_is_bit_identical(smollm2):
    model, tok = smollm2
    task = passkey_context(tok, 300, 0.5)
    ids = torch.tensor([ts.PromptFormat(tok).context_ids(task.context)])
    with ts.prune(model, "lazyllm", keep=(1.0, 1.0, 1.0)) as cache, torch.inference_mode():
        got = model(ids, **with_cache(model, cache)).logits
        nxt = model(ids[:, -1:], **with_cache(model, cache)).logits
    with plain_sdpa(model), torch.inference_mode():
        ref = DynamicCache(config=model.config)
        want = model(ids, **with_cache(model, ref)).logits
        want_next = model(ids[:, -1:], **with_cache(model, ref)).logits
    assert torch.equal(got, want) and torch.equal(nxt, want_next)


@pytest.mark.parametrize(
    "args",
    [["--method", "h2o", "--budget", "64"], ["--method", "quest", "--read", "0.25", "--measure"],
     ["--method", "lazyllm"]],
)  # fmt: skip
def test_cli_decode_json(smollm2, capsys, tmp_path, args):
    _, tok = smollm2
    task = passkey_context(tok, 300, 0.3, key="52816")
    path = tmp_path / "ctx.txt"
    path.write_text(task.context)
    rc = main(["decode", *args, "--context-file", str(path), "--question", task.question, "--max-new-tokens", "6",
               "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    for key in ("answer", "method", "family", "prompt_tokens", "new_tokens", "ttft_seconds", "tokens_per_second",
                "kv_bytes", "peak_kv_bytes", "extra"):  # fmt: skip
        assert key in out
    extra, method = out["extra"], args[1]
    assert out["new_tokens"] >= 1 and out["prompt_tokens"] > 250
    if method == "h2o":  # engaged: the budget held (plus the step's one new slot before its eviction)
        assert 64 <= extra["peak_tokens_held"] <= 64 + 1
    elif method == "quest":  # engaged: about the requested fraction read, and something measured
        assert extra["steps"] > 0 and 0.25 <= extra["read_fraction"] < 0.45 and extra["recall"] > 0.1
    else:  # engaged: every layer ran, the pruned ones on strictly fewer tokens
        alive = extra["alive_per_layer"]
        assert len(alive) == 30 and alive[0] == out["prompt_tokens"] and alive[-1] < alive[0]
        assert all(a >= b for a, b in itertools.pairwise(alive)) and len(set(alive)) >= 3  # 3 pruning stages
    assert out["method"] == args[1] and out["new_tokens"] >= 1
