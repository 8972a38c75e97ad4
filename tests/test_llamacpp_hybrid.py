"""Gemma-3 in llama.cpp (sliding-window + full-attention layers): ``keep`` as a share of the state's bytes, the
window cut on its own through llama.cpp's partial state. Short contexts on the bundled Gemma-3 GGUF."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("llama_cpp")

from tokensieve.engines.llamacpp import Engine, Settings, compress
from tokensieve.engines.llamacpp.hybrid import PARTIAL_ONLY, cut_window, layout, state_size
from tokensieve.errors import ParameterError
from tokensieve.runtime.passkey import passkey_context

pytestmark = [pytest.mark.real, pytest.mark.llamacpp]

SETTINGS = dict(n_ctx=1024, n_batch=256, n_ubatch=128)


@pytest.fixture(scope="module")
def gem():
    with Engine("gemma3-270m", Settings(**SETTINGS)) as e:
        yield e


@pytest.fixture(scope="module")
def pk(gem):
    return passkey_context(gem.tokenizer, 700, 0.3, key="48151")


def test_layout_measures_the_two_caches(gem, pk):
    gem.clear()
    gem.prefill(gem.prompt.context_ids(pk.context))
    lay = layout(gem)
    # Gemma-3 270M (its model card): 18 layers, every sixth full attention, 512-token windows
    assert (lay.full_layers, lay.sliding_layers) == (3, 15)
    assert lay.window_cells == gem.m.n_swa == 512
    assert lay.tokens == len(gem.seq.cells) > 512


def test_cut_window_shrinks_only_the_sliding_cache(gem, pk):
    gem.clear()
    ids = gem.prompt.context_ids(pk.context)
    gem.prefill(ids)
    whole, part = state_size(gem), state_size(gem, PARTIAL_ONLY)
    per_window_cell = part / 512
    cut_window(gem, 40)
    whole2, part2 = state_size(gem), state_size(gem, PARTIAL_ONLY)
    assert whole2 - part2 == whole - part  # the full layers' cells: untouched
    assert abs(part2 - 40 * per_window_cell) < 0.01 * part  # 40 of the 512 window cells remain
    assert gem.pos_range() == (len(ids) - 40, len(ids) - 1)  # llama.cpp's pos_min reads the window
    assert gem.seq.cells == list(range(len(ids)))
    # the needle sits 490 tokens before the window's 40 cells: only the full layers can still see it, and do
    assert pk.correct(gem.answer(pk.question, 10, pk.answer_prefix).text)
    assert pk.correct(gem.answer(pk.question, 10, pk.answer_prefix).text)  # and again: the cache is intact
    with pytest.raises(ParameterError):
        cut_window(gem, 0)


def test_keep_is_a_share_of_the_bytes_full_first(gem, pk):
    rep = compress(gem, pk.context, "kvzip", keep=0.5)
    assert rep.kept_tokens == rep.context_tokens  # 700 tokens: the full layers keep every position
    assert rep.window_cells is not None and 1 <= rep.window_cells < 512
    assert abs(rep.state_bytes / rep.state_bytes_full - 0.5) < 0.03
    assert pk.correct(gem.answer(pk.question, 10, pk.answer_prefix).text)
    rep = compress(gem, pk.context, "kvzip", keep=0.2)
    assert rep.kept_tokens < rep.context_tokens
    assert abs(rep.state_bytes / rep.state_bytes_full - 0.2) < 0.03


def test_shared_keeps_a_share_of_positions_in_both_caches(gem, pk):
    rep = compress(gem, pk.context, "kvzip", keep=0.5, hybrid="shared")
    assert rep.kept_tokens == math.ceil(0.5 * rep.context_tokens)
    assert rep.window_cells is None
    assert rep.state_bytes / rep.state_bytes_full > 0.5  # the window's cells cost five full-layer cells each


def test_keep_one_full_first_is_plain_llamacpp(gem, pk):
    ids = gem.prompt.context_ids(pk.context)
    q = gem.prompt.question_ids(pk.question, pk.answer_prefix)
    with Engine("gemma3-270m", Settings(**SETTINGS, scoring=False)) as plain:
        plain.prefill(ids)
        want = plain.logits_after(q)
    rep = compress(gem, pk.context, "kvzip", keep=1.0)
    assert rep.kept_tokens == len(ids) and rep.state_bytes == rep.state_bytes_full
    assert np.array_equal(gem.logits_after(q), want)


def test_hybrid_needs_a_hybrid_model_and_a_known_policy(gem, pk):
    with Engine("smollm2", Settings(**SETTINGS)) as e, pytest.raises(ParameterError, match="no sliding-window"):
        compress(e, pk.context, "kvzip", keep=0.5, hybrid="even")
    with pytest.raises(ParameterError, match="hybrid"):
        compress(gem, pk.context, "kvzip", keep=0.5, hybrid="sideways")


def test_cli_reports_the_split_and_takes_hybrid_as_a_param(gem, pk, tmp_path, capsys):
    import json

    from tokensieve.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text(pk.context)
    base = ["generate", "--engine", "llama.cpp", "--model", "gemma3-270m", "--context-file", str(doc), "--question",
            pk.question, "--answer-prefix", pk.answer_prefix, "--max-new-tokens", "8", "--n-ctx", "1024",
            "--method", "streaming", "--keep", "0.5", "--json"]  # fmt: skip
    assert main(base) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["window_cells"] < 512 and abs(rec["kv_ratio"] - 0.5) < 0.03
    assert main([*base, "--param", "hybrid=shared"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["window_cells"] is None and rec["kept_tokens"] == math.ceil(0.5 * rec["context_tokens"])
    assert main([*base, "--param", "hybrid=sideways"]) == 2
