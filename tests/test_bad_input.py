"""Bad input found by trying the CLI and the Python API as a new user: one typed, one-line error each."""

from __future__ import annotations

import pytest
import torch

import tokensieve as ts
from conftest import make_model
from tokensieve.cli import main
from tokensieve.errors import BatchError, ParameterError, UnknownMethodError


def _cli_usage_error(capsys, argv: list[str]) -> str:
    """argparse's own exit 2 for a malformed value; returns its error line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_param_of_the_wrong_kind(capsys):
    rc = main(["generate", "--method", "snapkv", "--keep", "0.5", "--param", "window=abc", "--context", "x",
               "--question", "q?"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "window='abc'" in err and "must be a number" in err and "\n" not in err


def test_cli_negative_max_new_tokens(capsys):
    for cmd in (["generate", "--method", "snapkv", "--keep", "0.5"], ["decode", "--method", "h2o", "--budget", "8"]):
        line = _cli_usage_error(capsys, [*cmd, "--max-new-tokens", "-3", "--context", "x", "--question", "q?"])
        assert "--max-new-tokens" in line and "positive whole number" in line


@pytest.mark.parametrize("read", ["2", "0", "-0.5", "abc"])
def test_cli_read_outside_a_fraction(capsys, read):
    argv = ["decode", "--method", "quest", "--read", read, "--context", "x", "--question", "q"]
    line = _cli_usage_error(capsys, argv)
    assert "--read" in line and "(0, 1]" in line and "--read-tokens" in line


def test_cli_read_and_read_tokens_together(capsys):
    argv = ["decode", "--method", "quest", "--read", "0.5", "--read-tokens", "8", "--context", "x", "--question", "q"]
    rc = main(argv)
    assert rc == 2 and "not both" in capsys.readouterr().err


def test_unknown_parameter_lists_only_parameters():
    with pytest.raises(UnknownMethodError) as e:
        ts.SieveCache(make_model("llama"), "snapkv", keep=0.5, windw=3)
    takes = str(e.value).split("it takes: ")[1]
    assert "window" in takes and not {"id", "paper", "rule", "kind"} & {n.strip() for n in takes.split(",")}


def test_python_param_of_the_wrong_kind():
    with pytest.raises(ParameterError, match="must be a number"):
        ts.SieveCache(make_model("llama"), "snapkv", keep=0.5, window="abc")


def ids(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(3, 128, shape, generator=torch.Generator().manual_seed(seed))


def test_one_question_is_asked_of_every_context_row():
    model = make_model("llama")
    ctx = ts.compress(model, None, ids(0, (2, 24)), "snapkv", keep=0.5)
    question = ids(1, (1, 4))
    both = ctx.generate(question, max_new_tokens=3, min_new_tokens=3)
    assert both.shape == (2, 3)
    for row in range(2):  # the same as asking each row alone
        alone = ts.compress(model, None, ids(0, (2, 24))[row : row + 1], "snapkv", keep=0.5)
        assert torch.equal(alone.generate(question, max_new_tokens=3, min_new_tokens=3)[0], both[row])
    with pytest.raises(BatchError, match="3 questions for 2 contexts"):
        ctx.generate(ids(2, (3, 4)), max_new_tokens=2)


def test_python_max_new_tokens_is_checked_where_it_enters():
    model = make_model("llama")
    ctx = ts.compress(model, None, ids(0, (1, 24)), "snapkv", keep=0.5)
    for bad in (-3, 0, 2.5, True):
        with pytest.raises(ParameterError, match="max_new_tokens"):
            ctx.answer("q?", max_new_tokens=bad)
        with pytest.raises(ParameterError, match="max_new_tokens"):
            ts.decode(model, None, "text", "q?", "h2o", budget=8, max_new_tokens=bad)
