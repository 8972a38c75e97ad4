"""Tiny random models of each supported architecture, built from configs (no download), and the real model."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
from contextlib import contextmanager
from types import ModuleType

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

torch.set_num_threads(min(2, os.cpu_count() or 1))

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)


def _llama():
    return LlamaForCausalLM(LlamaConfig(**COMMON))


def _mistral():
    return MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None))


def _qwen2():
    return Qwen2ForCausalLM(Qwen2Config(**COMMON))


def _qwen3():
    return Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16))


def _gemma3():
    cfg = Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 4},
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
    )
    return Gemma3ForCausalLM(cfg)


ARCHS = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "gemma3": _gemma3}


def make_model(arch: str, seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    model = ARCHS[arch]().eval()
    model.set_attn_implementation(attn)
    return model


def twin(model):
    """An independent copy of ``model`` on plain SDPA: the reference that tokensieve must match."""
    ref = type(model)(copy.deepcopy(model.config)).eval()
    ref.load_state_dict(model.state_dict())
    ref.set_attn_implementation("sdpa")
    return ref


@contextmanager
def plain_sdpa(model):
    """Run ``model`` on transformers' own SDPA attention inside the block (the bit-exact reference)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def ids(seed: int, n: int, batch: int = 1, high: int = 128) -> torch.Tensor:
    """Seeded random token ids ``[batch, n]`` in ``[3, high)``: inputs for the tiny models (vocabulary 128)."""
    return torch.randint(3, high, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def llama_pair():
    """A prepared tiny Llama and its eager twin: the plain model whose dense attention the oracles read."""
    import tokensieve

    model = tokensieve.prepare(make_model("llama"))
    ref = twin(model)
    ref.set_attn_implementation("eager")
    return model, ref


def padded_rows_and_alone(model, compress, rows: list[list[int]], question: torch.Tensor) -> list[tuple]:
    """``compress(contexts)`` (a ``Compressed``) on ``rows`` as one left-padded batch, then on each row alone:
    per row, the batch's logits for ``question`` beside the row's own (a pad leaking into a score shows here)."""
    from tokensieve.compat import with_cache

    batch = compress(rows)
    mask = torch.cat([batch.context_mask, torch.ones(len(rows), question.shape[1])], 1).long()
    with torch.inference_mode():
        got = model(question.expand(len(rows), -1), attention_mask=mask, **with_cache(model, batch.cache.fork())).logits
    pairs = []
    for row, ctx in enumerate(rows):
        alone = compress([ctx])
        with torch.inference_mode():
            pairs.append((got[row : row + 1], model(question, **with_cache(model, alone.cache.fork())).logits))
    return pairs


def generate_padded_and_alone(model, make_cache, rows: list[list[int]], n: int) -> list[tuple]:
    """Greedy ``n`` new tokens for ``rows`` as one left-padded batch (one ``make_cache()``) and for each row alone
    (a fresh one): per row, the batch's new tokens beside the row's own."""
    from tokensieve.compat import with_cache
    from tokensieve.runtime.encode import left_pad

    greedy = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    prompt, mask = left_pad(rows, 0)
    with torch.inference_mode():
        both = model.generate(prompt, attention_mask=mask, **with_cache(model, make_cache()), **greedy)
        alone = [model.generate(torch.tensor([r]), **with_cache(model, make_cache()), **greedy) for r in rows]
    return [(both[i, prompt.shape[1] :], a[0, len(r) :]) for i, (r, a) in enumerate(zip(rows, alone, strict=True))]


def assert_padded_questions_match_one_by_one(compressed, questions: list[list[int]], n: int = 4) -> None:
    """Several left-padded questions on one compressed cache generate what each does asked alone."""
    from tokensieve.runtime.encode import left_pad

    qs, mask = left_pad(questions, 0)
    both = compressed.generate(qs, mask, max_new_tokens=n, min_new_tokens=n)
    alone = [compressed.generate(torch.tensor([q]), max_new_tokens=n, min_new_tokens=n) for q in questions]
    assert torch.equal(both, torch.cat(alone))


# .ci/run installs every optional piece (scripts/setup.sh, setup_kvpress.sh, chromium) and sets CI, so under CI a
# missing optional package fails its tests instead of skipping them (the floor run, core install only, unsets CI)
CI = bool(os.environ.get("CI"))


def optional(module: str, install: str) -> ModuleType:
    """Import an optional package a test needs: skip where it is missing, fail under CI."""
    if CI:
        try:
            return importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"{module} is not importable under CI ({install}): {e}")
    return pytest.importorskip(module, reason=f"{module} is not installed ({install})")


def requires(module: str, install: str) -> pytest.MarkDecorator:
    """``optional`` as a marker, for tests that import the package themselves."""
    return pytest.mark.skipif(
        not CI and importlib.util.find_spec(module) is None, reason=f"{module} is not installed ({install})"
    )


@pytest.fixture(autouse=True, scope="session")
def calibration_dir(tmp_path_factory):
    """Calibrations of the tiny random models go to a temporary directory, not the user's cache."""
    path = tmp_path_factory.mktemp("calibration")
    before = os.environ.get("TOKENSIEVE_CALIBRATION")
    os.environ["TOKENSIEVE_CALIBRATION"] = str(path)
    yield path
    if before is None:
        os.environ.pop("TOKENSIEVE_CALIBRATION", None)
    else:
        os.environ["TOKENSIEVE_CALIBRATION"] = before


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def smollm2():
    import tokensieve

    return tokensieve.load_model("smollm2")


@pytest.fixture(scope="session")
def gemma3_270m():
    import tokensieve

    return tokensieve.load_model("gemma3-270m")


INTEGRATION_NAMES = ("exact", "equal", "match", "bit", "every_arch", "architecture", "engag")


def pytest_collection_modifyitems(config, items):
    """``-m integration``: the tests that exercise transformers itself (what CI reruns on the floor release):
    tiny models of every architecture, the bit-exactness and equality tests, the real-model tests, engagement."""
    for item in items:
        name = item.name.lower()
        if (
            "arch" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("real")
            or any(n in name for n in INTEGRATION_NAMES)
            or item.module.__name__ == "test_engagement"
        ):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def byte_tok():
    """A byte-level tokenizer (256 bytes + eos + pad) for tiny models: no download."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<eos>"], vocab["<pad>"] = 256, 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
