"""tokensieve inside llama.cpp, on the bundled SmolLM2 GGUF with short contexts (each test a few seconds).

Skipped only where the ``llamacpp`` extra is missing *and* ``CI`` is unset: CI builds the extra (scripts/setup.sh),
so there a missing build fails instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("llama_cpp")

from tokensieve.engines.llamacpp import Engine, Settings, compress, evict, load, read_chunked, save
from tokensieve.engines.llamacpp.scores import question_pass, reconstruction_pass, window_pass
from tokensieve.errors import (
    EngagementError,
    InvalidKeepError,
    ModelNotFoundError,
    ParameterError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)
from tokensieve.runtime.passkey import passkey_context

pytestmark = [pytest.mark.real, pytest.mark.llamacpp]

MODEL = "smollm2"


@pytest.fixture(scope="module")
def eng():
    with Engine(MODEL, Settings(n_ctx=1024, n_batch=256, n_ubatch=128)) as e:
        yield e


@pytest.fixture(scope="module")
def passkey(eng):
    return passkey_context(eng.tokenizer, 300, 0.4, key="48151")


def _ids(eng, n: int) -> list[int]:
    pk = passkey_context(eng.tokenizer, n + 40, 0.5)
    return eng.prompt.context_ids(pk.context)[:n]


def test_keep_one_is_plain_llamacpp(eng, passkey):
    ids = eng.prompt.context_ids(passkey.context)
    q = eng.prompt.question_ids(passkey.question, passkey.answer_prefix)
    with Engine(MODEL, Settings(n_ctx=1024, n_batch=256, n_ubatch=128, scoring=False)) as plain:
        plain.prefill(ids)
        want = plain.logits_after(q)
    rep = compress(eng, passkey.context, "kvzip", keep=1.0)
    assert rep.kept_tokens == rep.context_tokens == len(ids)
    assert np.array_equal(eng.logits_after(q), want)
    # a scoring pass (attention read through cb_eval, graph split at every layer) leaves the cache as it was
    reconstruction_pass(eng, chunk=128)
    question_pass(eng, q)
    assert np.array_equal(eng.logits_after(q), want)


def test_eviction_removes_exactly_the_chosen_positions(eng):
    ids = _ids(eng, 120)
    eng.clear()
    eng.prefill(ids)
    before = eng.state_bytes()
    keep = [i for i in range(120) if i % 3 == 0 or i == 119]
    ev = evict(eng, keep)
    assert eng.seq.cells == keep  # positions kept as they were (holes mode)
    assert ev.removed == 120 - len(keep)
    assert eng.pos_range() == (0, 119)
    # llama.cpp's own count: exactly the removed cells are gone (K and V rows of every layer + 12 bytes of meta)
    m = eng.m
    per_cell = m.n_layer * 2 * (m.n_embd // m.n_head) * m.n_head_kv * 2 + 12
    assert before - eng.state_bytes() == ev.removed * per_cell
    # llama.cpp's mask for a new query agrees with the kept positions (the tap checks it on every layer)
    question_pass(eng, eng.prompt.question_ids("What?"))


def _layer0_keys(eng) -> np.ndarray:
    """Layer 0's cached keys [cells, heads, dim] as llama.cpp holds them, read through cb_eval on a fork."""
    got = {}

    def keep(layer, x, _q):
        got["k"] = x.copy()

    pos = eng.fork()
    try:
        with eng.m.tap.reading(keep, match=lambda name: 0 if name == "cache_k_l0 (view)" else None):
            eng.decode([eng.seq.tokens[max(eng.seq.cells)]], pos, 1, logits=False)
    finally:
        eng.drop_fork()
    assert "k" in got, "llama.cpp offered no cache_k_l0 view"
    return got["k"]


def test_cell_to_position_map_after_repeated_chunked_evictions(eng):
    ids = _ids(eng, 400)
    # oracle: layer 0's key of a cell depends only on its token and position, so a plain full prefill gives the
    # key every position must have; a wrong cell -> position map pairs cells with other positions' keys
    eng.clear()
    eng.prefill(ids)
    full = _layer0_keys(eng)[: len(ids)]
    rep = read_chunked(eng, ids, budget=96, chunk=64, method="snapkv", window=8)
    assert rep.chunks == 7 and rep.kept_tokens <= 96 + 64
    cells = eng.seq.cells
    assert len(set(cells)) == len(cells) and max(cells) == len(ids) - 1
    k = _layer0_keys(eng)[: len(cells)]
    err = np.abs(k - full[cells]).max()
    assert err < 2e-2, err
    shifted = np.abs(k - full[[min(p + 1, len(ids) - 1) for p in cells]]).max()
    assert shifted > 10 * max(err, 1e-3)  # the check can tell a map that is off by one


def test_window_scores_across_a_ubatch_that_ends_at_the_kv_padding(eng):
    """The observed queries span two ubatches and the first one's attention covers fewer cells than the window
    pass scores (llama.cpp's n_kv ends at its padding there): a 8k document read in 512-token chunks failed here.
    The scores must equal those of the same queries in one ubatch; cells a query cannot see count 0."""
    ids = _ids(eng, 400)[:280]
    assert len(ids) == 280
    eng.clear()
    eng.prefill(ids[:240])
    whole = window_pass(eng, ids[240:], observe=32)
    with Engine(MODEL, Settings(n_ctx=1024, n_batch=256, n_ubatch=16)) as small:
        small.prefill(ids[:240])
        split = window_pass(small, ids[240:], observe=32)  # ubatches [240, 256), [256, 272), [272, 280)
    assert whole.keys() == split.keys()
    for layer in whole:
        assert whole[layer].shape == split[layer].shape == (whole[layer].shape[0], 280)
        np.testing.assert_allclose(split[layer], whole[layer], atol=1e-4)


def test_renumbered_positions_are_contiguous_and_answers_survive(eng, passkey):
    ids = eng.prompt.context_ids(passkey.context)
    n = len(ids)
    keep = [i for i in range(n) if not (0.55 * n <= i < 0.9 * n)]  # the needle sits at 0.4
    q = (passkey.question, 12, passkey.answer_prefix)
    answers = []
    for renumber in (False, True):
        eng.clear()
        eng.prefill(ids)
        evict(eng, keep, renumber=renumber)
        answers.append(eng.answer(*q).text)
    assert sorted(eng.seq.cells) == list(range(len(keep)))
    assert eng.pos_range() == (0, len(keep) - 1)
    assert passkey.correct(answers[0]) and passkey.correct(answers[1]), answers


def test_saved_state_answers_identically_in_a_new_process(eng, passkey, tmp_path):
    compress(eng, passkey.context, "snapkv", keep=0.5)
    path = tmp_path / "ctx.state"
    size = save(eng, path)
    assert size > 0.9 * eng.state_bytes()
    ans = eng.answer(passkey.question, 12, passkey.answer_prefix)
    code = textwrap.dedent(f"""
        from tokensieve.engines.llamacpp import Engine, Settings, load
        with Engine({MODEL!r}, Settings(n_ctx=1024, n_batch=256, n_ubatch=128)) as e:
            load(e, {str(path)!r})
            print(e.answer({passkey.question!r}, 12, {passkey.answer_prefix!r}).text)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ans.text
    # loading in this process too: the same cells and the same answer
    cells = list(eng.seq.cells)
    assert load(eng, path) == len(cells) and eng.seq.cells == cells
    assert eng.answer(passkey.question, 12, passkey.answer_prefix).text == ans.text


def test_scoring_must_engage():
    settings = Settings(n_ctx=512, n_batch=128, n_ubatch=128, flash_attn="on")
    with Engine(MODEL, settings) as e, pytest.raises(EngagementError, match="kq_soft_max"):
        compress(e, _ids(e, 100), "kvzip", keep=0.5)


def test_bad_inputs(eng, tmp_path):
    with pytest.raises(ModelNotFoundError):
        Engine(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UnsupportedArchitectureError):
        Engine(junk)
    with pytest.raises(InvalidKeepError):
        compress(eng, "some text here", "kvzip", keep=0.0)
    with pytest.raises(UnknownMethodError):
        compress(eng, "some text here", "h2o-like", keep=0.5)
    with pytest.raises(ParameterError):
        Settings(type_k="q3").check()
    with pytest.raises(ParameterError):
        compress(eng, "some text here", "kvzip", keep=0.5, aggregate_by="median")
    with pytest.raises(ParameterError):
        compress(eng, "some text here", "kvzip", keep=0.5, skip_first=99)
    from tokensieve.cli import main

    assert main(["generate", "--engine", "llama.cpp", "--model", str(junk), "--keep", "0.5",
                 "--context", "x", "--question", "y"]) == 2  # fmt: skip


def test_cli_reads_a_document_in_chunks_under_a_budget(tmp_path, capsys):
    """``generate --engine llama.cpp --chunk``: a context longer than the cache is read chunk by chunk, never
    holding more than budget + chunk cells, and answered; a chunked read without --budget, or on the HF path, is a
    one-line error (exit 2)."""
    import json

    from tokensieve.cli import main

    with Engine(MODEL, Settings(n_ctx=256, scoring=False)) as e:  # the tokenizer lives as long as its engine
        pk = passkey_context(e.tokenizer, 700, 0.8, key="48151")
    doc = tmp_path / "doc.txt"
    doc.write_text(pk.context)
    base = ["generate", "--engine", "llama.cpp", "--model", MODEL, "--context-file", str(doc), "--question",
            pk.question, "--answer-prefix", pk.answer_prefix, "--max-new-tokens", "8", "--n-ctx", "512"]  # fmt: skip
    assert main([*base, "--method", "snapkv", "--budget", "256", "--chunk", "128", "--renumber", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["context_tokens"] > 600 and rec["kept_tokens"] == 256 and rec["chunks"] >= 5
    assert 256 < rec["peak_cells"] <= 256 + 128
    assert pk.correct(rec["answer"]), rec["answer"]  # the key sits in the last chunks: any reader keeps it
    assert main([*base, "--keep", "0.5", "--chunk", "128"]) == 2
    assert main([*base[:1], *base[3:], "--budget", "256", "--chunk", "128"]) == 2  # the HF engine: no --chunk


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_scores_agree_with_the_hf_path(eng):
    """The last 16 context queries' attention, summed, mean over layers and heads: llama.cpp (Q4_1 weights,
    quantized activations) against the HF path's fp32 copy of the same GGUF (eager attention: a test oracle on
    a short context). Tolerance: Spearman >= 0.9 over the context's tokens."""
    import torch

    from tokensieve.engines.llamacpp.scores import window_pass
    from tokensieve.runtime.models import load_model

    ids = _ids(eng, 160)
    eng.clear()
    layers = window_pass(eng, ids, 16)
    ours = np.stack([layers[i] for i in sorted(layers)]).mean(axis=(0, 1))
    model, _tok = load_model(MODEL, prepare=False)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(torch.tensor([ids]), output_attentions=True).attentions
    theirs = torch.stack([a[0, :, -16:, :].sum(1) for a in att]).mean((0, 1)).numpy()
    rho = _spearman(ours, theirs)
    print(f"spearman llama.cpp vs HF: {rho:.4f}")
    assert rho >= 0.9, rho


def test_sliding_window_layers_are_skipped_not_misread():
    """Gemma-3 keeps a separate sliding-window cache whose cells are reused on their own once a context passes
    the window (512): the tap reads only the layers whose mask matches the cell list (the full-attention ones)
    and eviction still answers."""
    with Engine("gemma3-270m", Settings(n_ctx=1024, n_batch=256, n_ubatch=128)) as e:
        pk = passkey_context(e.tokenizer, 600, 0.3, key="48151")
        rep = compress(e, pk.context, "snapkv", keep=0.6, hybrid="shared")  # one selection, both caches
        assert rep.context_tokens > e.m.n_swa
        assert 0 < rep.layers_read < e.m.n_layer  # the full-attention layers only
        assert e.m.tap.skipped  # the sliding-window layers, once past the window
        # seq_rm on both caches (full and sliding-window), then an answer over the holes
        ids = e.prompt.context_ids(pk.context)
        n = len(ids)
        e.clear()
        e.prefill(ids)
        evict(e, [i for i in range(n) if not 0.6 * n <= i < 0.9 * n])
        assert pk.correct(e.answer(pk.question, 10, pk.answer_prefix).text)


def test_keydiff_scores_llamacpp_cached_keys(eng):
    """keydiff on llama.cpp: the KV family's score on the cached keys equals -cos(k_j, mean key) computed here from
    layer 0's cache (an independent formula, in numpy)."""
    from tokensieve.engines.llamacpp.scores import keys_pass

    eng.clear()
    eng.prefill(_ids(eng, 80))
    layers = keys_pass(eng, "keydiff")
    assert sorted(layers) == list(range(eng.m.n_layer))
    k = _layer0_keys(eng)[:80].transpose(1, 0, 2).astype(np.float64)  # [Hkv, n, D]
    mean = k.mean(1, keepdims=True)
    cos = (k * mean).sum(-1) / (np.linalg.norm(k, axis=-1) * np.linalg.norm(mean, axis=-1))
    np.testing.assert_allclose(layers[0], -cos, atol=1e-4)


def _lag_np(x: np.ndarray, lag: int) -> np.ndarray:
    """LagKV's per-token score of one tensor [H, n, D], written out per chunk: chunk c normalised per channel by the
    min/max of chunk c+1, std over channels, softmax within the chunk; tokens without a full next chunk: +inf."""
    h, n, _ = x.shape
    out = np.full((h, n), np.inf)
    for c in range(n // lag - 1):
        cur, ref = x[:, c * lag : (c + 1) * lag], x[:, (c + 1) * lag : (c + 2) * lag]
        lo, hi = ref.min(1, keepdims=True), ref.max(1, keepdims=True)
        sd = ((cur - lo) / np.maximum(hi - lo, 1e-6)).std(-1)
        e = np.exp(sd - sd.max(-1, keepdims=True))
        out[:, c * lag : (c + 1) * lag] = e / e.sum(-1, keepdims=True)
    return out


def test_lagkv_scores_llamacpp_cached_keys_and_values(eng):
    """lagkv on llama.cpp: the KV family's score on the cached keys and values equals the chunked formula written
    here in numpy; the values are read in the right layout (layer 0's values depend only on the token, so cells
    holding the same token hold the same values, and different tokens differ)."""
    from tokensieve.engines.llamacpp.scores import KEYS, VALUES, cached, keys_pass
    from tokensieve.kv import get_method as kv_get

    lag = kv_get("lagkv").lag  # the registry's lag (128): chunk 0 has a full reference chunk
    ids = _ids(eng, 440)[:300]
    n = len(ids)
    assert 2 * lag <= n < 3 * lag
    eng.clear()
    eng.prefill(ids)
    k, v = cached(eng, KEYS, "test")[0].astype(np.float64), cached(eng, VALUES, "test")[0].astype(np.float64)
    same = [(i, j) for i in range(n) for j in range(i + 1, n) if ids[i] == ids[j]]
    diff = [(i, j) for i in range(0, n, 7) for j in range(i + 1, n, 5) if ids[i] != ids[j]]
    assert same and max(np.abs(v[:, i] - v[:, j]).max() for i, j in same) < 1e-3
    assert min(np.abs(v[:, i] - v[:, j]).max() for i, j in diff) > 1e-2
    np.testing.assert_allclose(k, _layer0_keys(eng)[:n].transpose(1, 0, 2), atol=1e-6)
    layers = keys_pass(eng, "lagkv")
    want = _lag_np(k, lag) + _lag_np(v, lag)
    finite = np.isfinite(want)
    assert finite.sum() == k.shape[0] * lag * (n // lag - 1)
    np.testing.assert_allclose(layers[0][finite], want[finite], atol=1e-4)
    assert np.isinf(layers[0][~finite]).all()
    eng.clear()
    rep = compress(eng, ids, "lagkv", budget=200)
    assert rep.kept_tokens == 200 and sorted(eng.seq.cells)[-(n - lag) :] == list(range(lag, n))  # +inf tail kept
