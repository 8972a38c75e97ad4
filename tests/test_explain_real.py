"""`tokensieve explain` on the bundled SmolLM2: the Python API and the CLI's JSON and HTML."""

from __future__ import annotations

import json
import re

import pytest

import tokensieve as ts
from tokensieve.cli import main
from tokensieve.runtime.passkey import passkey_context

pytestmark = pytest.mark.real


def test_explain_api_on_a_pass_key(smollm2):
    model, tok = smollm2
    task = passkey_context(tok, 150, 0.5, key="7143229")
    ex = ts.explain(
        model,
        tok,
        task.context,
        task.question,
        ["tova", "attention"],
        answer_prefix=task.answer_prefix,
        max_new_tokens=8,
        faithfulness=False,
    )
    assert "7143229" in ex.answer
    assert len(ex.tokens) == len(ex.scores["tova"]) == len(ex.offsets)
    assert "".join(ex.tokens).strip() == task.context.strip()
    units = ex.units("attention")
    assert sum(u.text == "7143229" for u in units) == 2  # the seven-digit key is one unit, twice in the needle
    shares = [int(x) for x in re.findall(r"\((\d+)%\)", ex.verbalize("attention"))]
    assert shares == [round(100 * t["share"]) for t in ex.top("attention", 3)]
    assert {"a": "tova", "b": "attention"}.items() <= ex.agreement[0].items()


def test_explain_cli_json_and_html(tmp_path, capsys):
    path = tmp_path / "ctx.txt"
    path.write_text("Notes from the trip.\nThe pass key is 71432. Remember it.\nThe sky was blue all day.")
    html = tmp_path / "out.html"
    rc = main(
        [
            "explain",
            "--context-file",
            str(path),
            "--question",
            "What is the pass key?",
            "--answer-prefix",
            "The pass key is",
            "--method",
            "attention",
            "--max-new-tokens",
            "6",
            "--html",
            str(html),
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("answer", "method", "tokens", "scores", "top", "verbalization", "faithfulness", "seconds"):
        assert key in d
    assert "71432" in d["answer"] and d["method"] == "attention"
    f = d["faithfulness"]["attention"]
    assert {"comprehensiveness", "sufficiency", "soft_nc", "soft_ns", "comprehensiveness_ratio"} <= set(f)
    assert html.read_text().startswith("<!doctype html>")
