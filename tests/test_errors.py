"""Bad input gets a typed exception from Python and a one-line error (exit 2) from the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, T5Config, T5ForConditionalGeneration

import tokensieve as ts
from conftest import make_model
from tokensieve.cli import main
from tokensieve.compat import with_cache
from tokensieve.kv import SieveCache

CTX = torch.randint(3, 100, (1, 30), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    return ts.prepare(make_model("llama"))


@pytest.mark.parametrize("keep", [0, -0.5, 1.01, 7, float("nan")])
def test_keep_outside_unit_interval(model, keep):
    with pytest.raises(ts.InvalidKeepError, match=r"outside \(0, 1\]"):
        ts.compress(model, None, CTX, "snapkv", keep=keep)


@pytest.mark.parametrize("budget", [30, 31, 500])
def test_budget_not_below_context(model, budget):
    with pytest.raises(ts.BudgetError, match="not smaller than the context"):
        ts.compress(model, None, CTX, "snapkv", budget=budget)


def test_budget_must_be_positive_and_exclusive_with_keep(model):
    with pytest.raises(ts.BudgetError, match="positive integer"):
        ts.compress(model, None, CTX, "snapkv", budget=0)
    with pytest.raises(ts.BudgetError, match="exactly one"):
        ts.compress(model, None, CTX, "snapkv", keep=0.5, budget=4)


@pytest.mark.parametrize("context", ["", "   \n", [], torch.empty(1, 0, dtype=torch.long)])
def test_empty_context(model, context):
    with pytest.raises(ts.EmptyContextError, match="context is empty"):
        ts.compress(model, None, context, "snapkv", keep=0.5)


def test_unknown_method_and_parameter(model):
    with pytest.raises(ts.UnknownMethodError, match=r"unknown method id 'snapkvv'.*snapkv"):
        ts.compress(model, None, CTX, "snapkvv", keep=0.5)
    with pytest.raises(ts.UnknownMethodError, match="bad parameter for method 'snapkv'"):
        ts.compress(model, None, CTX, "snapkv", keep=0.5, windw=3)


def test_unsupported_architectures():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    with pytest.raises(ts.UnsupportedArchitectureError, match="encoder-decoder"):
        ts.prepare(t5)
    g2 = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
        )
    )
    with pytest.raises(ts.UnsupportedArchitectureError, match="soft-capping"):
        ts.prepare(g2)


def test_cache_on_an_unprepared_model_fails_clearly():
    plain = make_model("llama")
    cache = SieveCache(plain.config, "snapkv", keep=0.5)  # a config only: the model stays on plain SDPA
    with pytest.raises(ts.NotPreparedError, match=r"tokensieve.prepare\(model\)"), torch.inference_mode():
        plain(CTX, **with_cache(plain, cache))


# --- CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--method", "nope", "--keep", "0.5"], "unknown method id 'nope'"),
        (["--method", "snapkv", "--keep", "1.5"], "outside (0, 1]"),
        (["--method", "snapkv", "--keep", "0.5", "--param", "windw=3"], "bad parameter"),
        (["--method", "snapkv", "--keep", "0.5", "--model", "/no/such/model"], "neither a bundled model"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, needle):
    rc = main(["generate", *argv, "--context", "some text", "--question", "q?"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and err.startswith("tokensieve: error:") and "\n" not in err


def test_cli_empty_context_file(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    rc = main(["generate", "--method", "snapkv", "--keep", "0.5", "--context-file", str(empty), "--question", "q"])
    assert rc == 2 and "context is empty" in capsys.readouterr().err


def test_cli_lists_methods_as_json(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    from tokensieve.kv import PRUNERS, SPARSE
    from tokensieve.quantize.methods import REGISTRY as QUANT
    from tokensieve.train import RULES

    vision = ("vision tokens (ViT)", "vision-language tokens (VLM)")
    others = ("budget allocator", "attribution", "token-weighted training", "weight quantization", *vision)
    ids = [r["id"] for r in rows if r["kind"] not in others]
    assert ids == [*ts.method_ids(), *SPARSE, *PRUNERS]  # every family, each under its kind
    assert [r["id"] for r in rows if r["kind"] == "token-weighted training"] == list(RULES)  # train
    assert [r["id"] for r in rows if r["kind"] == "weight quantization"] == list(QUANT)  # quantize
    assert [r["id"] for r in rows if r["kind"] == "budget allocator"] == list(ts.ALLOCATORS)
    assert {"reagent", "occlusion", "rollout"} <= {r["id"] for r in rows if r["kind"] == "attribution"}  # explain
    assert all(r["paper"] and r["rule"] and r["kind"] for r in rows)
    kinds = {r["id"]: r["kind"] for r in rows}
    assert kinds["h2o"] == "prefill eviction + decode eviction" and kinds["snapkv"] == "prefill eviction"
    assert kinds["quest"] == "sparse decoding" and kinds["lazyllm"] == "prefill pruning"
    from tokensieve.vision import VISION_METHODS
    from tokensieve.vlm import VLM_METHODS

    assert [r["id"] for r in rows if r["kind"] == vision[0]] == list(VISION_METHODS)  # `tokensieve vision`
    assert [r["id"] for r in rows if r["kind"] == vision[1]] == list(VLM_METHODS)
    assert list(VLM_METHODS) == ["fastv", "todre", "idpruner", "mmtok"]


# --- decode-time families ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "knorm"], "does not act at decode time"),
        (["--method", "h2o"], "needs --budget"),
        (["--method", "h2o", "--budget", "64", "--read", "0.1"], "--read applies to sparse decoding"),
        (["--method", "quest", "--budget", "64"], "apply to decode eviction"),
        (["--method", "lazyllm", "--read", "0.5"], "--read applies to sparse decoding"),
    ],
)
def test_cli_decode_bad_input_is_one_line_and_exit_2(capsys, args, message):
    rc = main(["decode", *args, "--context", "some text", "--question", "q?"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_decode_api_rejects_a_prefill_only_method(model):
    with pytest.raises(ts.UnknownMethodError, match="does not act at decode time"):
        ts.decode(model, None, "text", "q?", "snapkv", budget=8)


@pytest.mark.parametrize(
    "method,family",
    [("quest", "sparse-decoding method"), ("lazyllm", "prefill-pruning method"), ("adakv", "budget allocator")],
)
def test_a_method_of_another_family_is_named_as_such(method, family):
    with pytest.raises(ts.UnknownMethodError, match=family):
        ts.get_method(method)
