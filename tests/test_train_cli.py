"""`tokensieve train` end to end on a tiny model (with the bundled SmolLM2's tokenizer), its errors, and the
real SmolLM2's per-token loss; the tasks need reasoning-gym (the `train` extra)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import requires
from tokensieve.cli import main
from tokensieve.errors import TokenSieveError
from tokensieve.train import DFT, SFT, token_loss
from tokensieve.train.data import collate, encode, load_task, wrong_solution

needs_gym = requires("reasoning_gym", "pip install 'tokensieve[train]'")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    from tokensieve.runtime.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2"), local_files_only=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_bad_method_and_bad_param_exit_2(tmp_path, capsys):
    assert main(["train", "--method", "nope", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "unknown training rule 'nope'" in capsys.readouterr().err
    assert main(["train", "--method", "dft", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert main(["train", "--method", "excess_loss", "--param", "k", "--steps", "2", "--out", str(tmp_path)]) == 2


def test_bad_task_exits_2(tmp_path, capsys):
    assert main(["train", "--method", "sft", "--task", "poetry", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "unknown task 'poetry'" in capsys.readouterr().err


@pytest.mark.real
@needs_gym
@pytest.mark.parametrize("method", ["sstoken", "critical"])
def test_train_cli_runs_resumes_and_refuses_other_settings(tiny_dir, tmp_path, method):
    out = tmp_path / method
    args = ["train", "--method", method, "--steps", "3", "--batch", "2", "--out", str(out), "--model", str(tiny_dir),
            "--n-eval", "2", "--save-every", "2", "--aux-steps", "1", "--max-len", "64"]
    state = json.loads((out / "results.json").read_text()) if main(args) == 0 else None
    assert state is not None and len(state["log"]) == 3 and state["eval"]["n"] == 2
    assert (out / "loss.png").exists() and (out / "checkpoint" / "trainable.safetensors").exists()
    # resume: drop the last step and the evaluation, rerun the same command; it continues at step 2
    state["log"] = state["log"][:2]
    state["eval"] = None
    (out / "results.json").write_text(json.dumps(state))
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["step"] for r in again["log"]] == [1, 2, 3] and again["eval"] is not None
    assert main([*args[:-2], "--max-len", "32"]) == 2  # other settings, same --out


@needs_gym
def test_splits_are_disjoint_and_the_leak_check_refuses_a_shared_prompt():
    from tokensieve.train.data import SPLIT_STRIDE, LeakError, check_disjoint, load_split, split_seed

    starts = {split_seed(sp, s) for sp in ("train", "test", "validation", "calibration") for s in range(3)}
    ordered = sorted(starts)
    assert len(starts) == 12 and all(b - a >= SPLIT_STRIDE for a, b in itertools.pairwise(ordered))
    test = load_split("chain_sum", "test", 60, 0)
    train = load_split("chain_sum", "train", 300, 0, exclude={e.prompt for e in test})
    assert len({e.prompt for e in test}) == 60 and len(train) == 300
    check_disjoint({"test": test}, {"training": train})  # passes: train excluded the test prompts
    # disjoint generator seeds are not enough: without the exclusion, small expressions come out of both ranges
    plain = load_task("chain_sum", 800, split_seed("train", 0))
    assert {e.prompt for e in plain} & {e.prompt for e in test}
    with pytest.raises(LeakError, match="test prompt"):
        check_disjoint({"test": test}, {"training": plain})
    with pytest.raises(LeakError, match="validation"):
        check_disjoint({"test": test, "validation": test[:1]}, {})
    with pytest.raises(TokenSieveError):
        split_seed("holdout", 0)


@needs_gym
def test_encode_marks_the_answer_line():
    from transformers import AutoTokenizer

    from tokensieve.runtime.models import resolve
    from tokensieve.train.data import Example

    tok = AutoTokenizer.from_pretrained(resolve("smollm2"), local_files_only=True)
    d = encode(tok, Example("1 + 2 =\n", "1 + 2 = 3\nAnswer: 3", "3"), 64)
    marked = tok.decode(d["input_ids"][d["answer"].bool()])
    assert marked.strip() == "Answer: 3"


@needs_gym
def test_wrong_solutions_are_wrong():
    a = load_task("chain_sum", 30, 0)
    for e in a:
        w = wrong_solution(e, 0)
        assert w.answer != e.answer and w.solution.endswith(f"Answer: {w.answer}")
    gsm = load_task("gsm_symbolic", 2, 0)[0]
    assert gsm.solution.endswith(f"Answer: {gsm.answer}") and "####" not in gsm.solution


@pytest.mark.real
@needs_gym
def test_real_smollm2_rule_losses_on_a_real_batch(smollm2):
    model, tok = smollm2  # on tokensieve's attention (the shared fixture): with nothing attached it is SDPA
    batch = collate([encode(tok, e, 96) for e in load_task("chain_sum", 4, 0)], tok.pad_token_id)
    batch.pop("noise")
    with torch.no_grad():
        ours, tb = token_loss(SFT(), model, batch)
        hf = model(**batch).loss
        dft, _ = token_loss(DFT(), model, batch)
    assert torch.allclose(ours, hf, atol=1e-4)
    p = tb.logp.exp()[tb.mask]
    assert torch.allclose(dft, (-(tb.logp[tb.mask]) * p).mean(), atol=1e-5)
