"""``--pages`` on the generate and decode commands: validated before the model loads (exit 2, one line), and
the paged bytes reported."""

from __future__ import annotations

import json

import pytest

from test_bench import tiny_llama
from tokensieve.cli import main

CTX = ["--context", "some text " * 30, "--question", "q?", "--max-new-tokens", "3"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate", "--method", "snapkv", "--keep", "0.5", "--pages", "0"], "page size"),
        (["generate", "--method", "snapkv", "--keep", "0.5", "--page-layout", "head"], "need pages"),
        (["generate", "--method", "ems", "--keep", "0.5", "--pages", "16"], "merges"),
        (["generate", "--method", "snapkv", "--keep", "0.5", "--allocator", "adakv", "--pages", "8"], "allocator"),
        (["decode", "--method", "quest", "--pages", "16"], "decode eviction"),
        (["decode", "--method", "h2o", "--budget", "64", "--pages", "-3"], "page size"),
    ],
)
def test_bad_page_options_exit_2_in_one_line(capsys, argv, needle):
    assert main([*argv, *CTX, "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_pages_from_the_cli(byte_tok, tmp_path, capsys):
    path = tmp_path / "tiny"
    tiny_llama().save_pretrained(path)
    byte_tok.save_pretrained(path)
    assert (
        main(
            ["generate", "--method", "snapkv", "--keep", "0.25", "--pages", "16", "--json", "--model", str(path), *CTX]
        )
        == 0
    )
    rec = json.loads(capsys.readouterr().out)
    page = 16 * 2 * 16 * 2 * 4  # tokens x (K, V) x head dim x KV heads x float32, per layer
    assert rec["pages"] == 16 and rec["kv_bytes"] % page == 0 and rec["kv_bytes"] < rec["kv_bytes_full"]
    argv = ["decode", "--method", "h2o", "--budget", "64", "--pages", "16", "--page-layout", "head", "--json"]
    assert main([*argv, "--model", str(path), *CTX]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["extra"]["pages"] == 16 and rec["extra"]["paged_kv_bytes"] % (page // 2) == 0
