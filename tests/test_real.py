"""The bundled SmolLM2-135M-Instruct (converted once to ~/.cache/tokensieve), on real text."""

from __future__ import annotations

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


# Measured (benchmarks/passkey_depth/results/passkey_depth_snapkv.md): with the answer started
# ("The pass key is"), the full cache answers 62/66 and query-aware SnapKV at keep 0.25 64/66 (6 keys x 11 depths
# of 1.5k tokens of prose).
@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_pass_key_full_cache(smollm2, depth):
    model, tok = smollm2
    task = passkey_context(tok, 1500, depth, key="31147")
    pre = ts.prefill(model, tok, task.context)
    assert 1400 <= pre.context_tokens <= 1600
    full = pre.uncompressed().answer(task.question, answer_prefix=task.answer_prefix)
    assert task.correct(full), full


def test_pass_key_snapkv_at_quarter(smollm2):
    """SnapKV at 4x, query-aware (its paper's setting), at three depths with two keys each. Greedy decoding
    is deterministic here, but a different CPU kernel can flip a borderline digit, so one miss is allowed."""
    model, tok = smollm2
    answers = []
    for depth in (0.1, 0.5, 0.9):
        for key in ("40507", "88213"):
            task = passkey_context(tok, 1500, depth, key=key)
            ans = ts.generate(
                model,
                tok,
                task.context,
                task.question,
                "snapkv",
                keep=0.25,
                query_aware=True,
                answer_prefix=task.answer_prefix,
            )
            assert ans.stats.ratio <= 0.25 + 1 / ans.stats.context_tokens  # round(keep * T) tokens per head
            answers.append((depth, key, ans.text, task.correct(ans.text)))
    assert sum(ok for *_, ok in answers) >= 5, answers


def test_real_model_nothing_evicted_is_bit_identical(smollm2):
    model, tok = smollm2
    task = passkey_context(tok, 300, 0.5)
    pre = ts.prefill(model, tok, task.context, methods=["snapkv", "h2o", "zipcache"])
    question = torch.tensor([ts.PromptFormat(tok).question_ids(task.question, task.answer_prefix)])
    with torch.inference_mode():
        got = model(question, **with_cache(model, pre.compress("h2o", keep=1.0).cache.fork())).logits
        with plain_sdpa(model):  # the same weights in memory, on transformers' own SDPA path
            cache = DynamicCache(config=model.config)
            first = model(pre.context_ids, **with_cache(model, cache), logits_to_keep=1).logits[:, -1]
            want = model(question, **with_cache(model, cache)).logits
    assert torch.equal(pre.last_logits, first) and torch.equal(got, want)


def test_real_model_kv_bytes_are_kept_tokens(smollm2):
    model, tok = smollm2
    task = passkey_context(tok, 800, 0.5)
    c = ts.compress(model, tok, task.context, "tova", keep=0.25)
    cfg = model.config
    per_token = 2 * cfg.num_key_value_heads * cfg.head_dim * 4 * cfg.num_hidden_layers
    kept = round(0.25 * c.stats.context_tokens)
    assert c.cache.tokens_held() == [kept] * cfg.num_hidden_layers
    assert c.stats.kv_bytes == kept * per_token
    assert c.stats.kv_bytes_full == c.stats.context_tokens * per_token


def test_cli_generate_json(smollm2, capsys, tmp_path):
    _, tok = smollm2
    task = passkey_context(tok, 400, 0.3, key="52816")
    path = tmp_path / "ctx.txt"
    path.write_text(task.context)
    rc = main(
        [
            "generate",
            "--method",
            "snapkv",
            "--keep",
            "0.5",
            "--context-file",
            str(path),
            "--question",
            task.question,
            "--max-new-tokens",
            "16",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    for key in (
        "answer",
        "method",
        "keep",
        "context_tokens",
        "kv_bytes_full",
        "kv_bytes",
        "prefill_seconds",
        "compress_seconds",
        "decode_seconds",
    ):
        assert key in out
    assert out["method"] == "snapkv" and out["kv_bytes"] < out["kv_bytes_full"]


def test_demo_runs_and_reports_every_row(smollm2, capsys):
    from rich.console import Console

    from tokensieve.demo import run_demo

    assert run_demo("smollm2", "snapkv", 0.25, 600, 0.5, Console(width=250)) == 0
    out = capsys.readouterr().out
    for row in ("full", "snapkv, question unseen", "snapkv, query-aware", "mikv fp32 + INT2 (same bytes)", "(25%)"):
        assert row in out, row
