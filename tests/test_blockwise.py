"""``block`` (kv/blockwise.py): chunked prefill under a budget. A layer never holds more than budget + block, the
positions of later tokens are those of a full prefill, nothing evicted means the plain model's cache, and
methods that cannot judge held tokens from one block are refused; ``block`` as a method id runs it from
``tokensieve.compress``, the bench (its own prefill per cell) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import tokensieve as ts
from conftest import CI, COMMON, make_model, twin
from tokensieve import compat
from tokensieve.cli import main
from tokensieve.errors import BatchError, PageError, ParameterError
from tokensieve.kv import compress_blocks, get_method
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


# --- `block` as a method id: tokensieve.compress, the bench and the CLI (issue 28, item 5) ------------------------


def test_compress_with_block_is_compress_blocks_and_nothing_removed_is_the_plain_model():
    model = make_model("llama", seed=4)
    ref = twin(model)
    ids = _ids(70, 2)
    c = ts.compress(model, None, ids, "block", keep=0.25, base="keydiff", size=16)
    direct = compress_blocks(model, None, ids, "keydiff", keep=0.25, block=16)
    for a, b in zip(c.cache.sieve_layers, direct.cache.sieve_layers, strict=True):
        assert a.n_held == b.n_held == round(0.25 * 70) and torch.equal(a.keys, b.keys)
    assert c.stats.peak_tokens_held <= round(0.25 * 70) + 16 + 16  # the first block takes the remainder
    # keep 1.0: nothing is evicted, the next tokens' logits are the plain model's (the block-wise forwards' rounding)
    full = ts.compress(model, None, ids, "block", keep=1.0, base="keydiff", size=16)
    nxt = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        want = ref(torch.cat([ids, nxt], 1)).logits[:, -3:]
        got = model(nxt, **compat.with_cache(model, full.cache.fork())).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert full.stats.kv_bytes == full.stats.kv_bytes_full


def test_block_refuses_a_prefilled_cache_pages_and_bases_one_block_cannot_judge():
    model = make_model("llama", seed=5)
    with pytest.raises(ParameterError, match="block by block"):
        ts.prefill(model, None, _ids(40)).compress("block", keep=0.5, size=16)
    with pytest.raises(PageError, match="drop pages="):
        ts.compress(model, None, _ids(40), "block", keep=0.5, size=16, pages=8)
    with pytest.raises(ParameterError, match="compress_blocks takes the score"):
        compress_blocks(model, None, _ids(40), "block", keep=0.5)
    for params, msg in (({"base": "kvzip"}, "whole prefill"), ({"size": 0}, "positive"),
                        ({"base": "snapkv", "size": 16}, "window"), ({"base": "chunk"}, "base=")):  # fmt: skip
        with pytest.raises(ParameterError, match=msg):
            get_method("block", **params)
    assert get_method("block", rerotate=True).scorer.id == "rerotate"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, byte_tok) -> Path:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**COMMON, "vocab_size": 258, "max_position_embeddings": 4096})).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 256, 257
    path = tmp_path_factory.mktemp("tiny-llama-block")
    model.save_pretrained(path)
    byte_tok.save_pretrained(path)
    return path


def test_bench_block_cells_hold_the_budget_and_charge_the_block_prefill(tiny_dir, tmp_path):
    from tokensieve.measure.bench import cells as ev
    from tokensieve.measure.bench.methods import MethodSpec
    from tokensieve.measure.bench.report import write_summary
    from tokensieve.measure.bench.runner import Config, run
    from tokensieve.measure.tasks import expand_tasks

    spec = MethodSpec.parse("block:base=keydiff:size=32")
    assert spec.own_prefill and spec.label == "block:base=keydiff:size=32"
    cfg = Config(tasks=expand_tasks("fidelity,niah_single"), lengths=[300], methods=[spec, MethodSpec("keydiff")],
                 keeps=[0.5, 0.25], samples=1, out=tmp_path / "run", model=str(tiny_dir), threads=None)  # fmt: skip
    lines = [json.loads(ln) for ln in run(cfg).read_text().splitlines() if ln.startswith("{")]
    cells = [r for r in lines if r.get("type") == "cell"]
    samples = {r["task"]: r for r in lines if r.get("type") == "sample"}
    block = [c for c in cells if c["method"] == spec.label]
    assert sorted((c["task"], c["keep"]) for c in block) == sorted(
        (t, k) for t in ("fidelity", "niah_single") for k in (0.5, 0.25)
    )
    for c in block:
        budget = round(c["keep"] * c["context_tokens"])
        assert c["tokens_held"] == budget  # every layer and head holds the budget (uniform allocator)
        assert c["kv_bytes"] == pytest.approx(c["kv_bytes_full"] * budget / c["context_tokens"], rel=1e-6)
        assert c["prefill_seconds"] == samples[c["task"]]["prefill_seconds"]  # the sample's plain prefill
        assert c["compress_seconds"] > 0 and c["rss_peak"] > 0 and 0.0 <= c["score"] <= 1.0
        plain = next(x for x in cells if x["method"] == "keydiff" and x["task"] == c["task"] and x["keep"] == c["keep"])
        assert set(plain) - {"batch"} <= set(c)  # the same fields as a shared-prefill cell
    # the fidelity cell is what the block-wise prefill of the same context gives, evaluated alone
    model, tok = ts.load_model(str(tiny_dir))
    sample = cfg.tasks[0].sample(tok, 300, 0)
    ctx = torch.tensor([sample.context_ids])
    pre = ts.prefill(model, tok, ctx)
    ref = ev.FidelityRef.build(pre.uncompressed(), sample.continuation, int(pre.last_logits[0].argmax()), 32)
    own = ev.fidelity_rows(ts.compress(model, tok, ctx, spec.method(), keep=0.25), ref).value[0]
    rec = next(c for c in block if c["task"] == "fidelity" and c["keep"] == 0.25)
    for k in ("nll", "kl", "top1", "greedy"):
        assert rec["metrics"][k] == pytest.approx(own[k], abs=1e-5), k
    assert "whole block-wise prefill" in write_summary(tmp_path / "run").read_text()


def test_cli_block(tiny_dir, capsys, tmp_path):
    argv = ["generate", "--model", str(tiny_dir), "--context", "The pass key is 4821. " * 12, "--question", "Key?",
            "--method", "block", "--param", "base=keydiff", "--param", "size=32", "--keep", "0.25",
            "--max-new-tokens", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["kv_bytes"] == pytest.approx(rec["kv_bytes_full"] * round(0.25 * rec["context_tokens"])
                                            / rec["context_tokens"], rel=1e-6)  # fmt: skip
    assert rec["method"] == "block:keydiff" and 0 < rec["peak_tokens_held"] <= round(0.25 * rec["context_tokens"]) + 64
    for bad, msg in ((["base=kvzip"], "whole prefill"), (["size=0"], "positive")):
        rc = main([*argv[:7], "--method", "block", *(x for p in bad for x in ("--param", p)), "--keep", "0.25"])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1, err
    rc = main(["bench", "--out", str(tmp_path / "x"), "--methods", "block:base=kvzip"])
    err = capsys.readouterr().err
    assert rc == 2 and "whole prefill" in err and err.count("\n") == 1, err


def test_bench_compare_kvpress_pairs_blockpress_with_block(tiny_dir, tmp_path):
    """``--compare kvpress``: kvpress's BlockPress (over KeyDiffPress, blocks of 128) runs beside its nominal
    counterpart ``block:base=keydiff:size=128`` on the same sample, both holding the same share."""
    from tokensieve.measure.bench.kvpress_bridge import available
    from tokensieve.measure.bench.methods import PRESSES, MethodSpec
    from tokensieve.measure.bench.report import write_summary
    from tokensieve.measure.bench.runner import Config, run
    from tokensieve.measure.tasks import expand_tasks

    python = available()
    if python is None:
        if CI:
            pytest.fail("CI is set but .venv-kvpress (scripts/setup_kvpress.sh) is missing: the kvpress tests must run")
        pytest.skip("kvpress environment not installed (scripts/setup_kvpress.sh)")
    press = PRESSES["block"]
    cfg = Config(tasks=expand_tasks("fidelity"), lengths=[300], methods=[MethodSpec.parse(press.nominal)],
                 keeps=[0.5], samples=1, out=tmp_path / "run", model=str(tiny_dir), threads=None, presses=[press],
                 kvpress_python=python)  # fmt: skip
    cells = [json.loads(ln) for ln in run(cfg).read_text().splitlines() if ln.startswith('{"type": "cell"')]
    theirs = next(c for c in cells if c["method"] == "kvpress:block")
    ours = next(c for c in cells if c["method"] == press.nominal)
    assert "error" not in theirs and theirs["tokens_held"] == ours["tokens_held"] == 150
    assert theirs["kv_bytes"] == ours["kv_bytes"]
    assert f"| {press.nominal} |" in write_summary(tmp_path / "run").read_text()
