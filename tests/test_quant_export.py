"""Quantized weights as files engines load: GGUF (llama.cpp) and compressed-tensors (transformers)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import optional
from tokensieve.errors import ParameterError, TokenSieveError
from tokensieve.quantize.export.grids import GRIDS
from tokensieve.quantize.gptq import Hessian, QuantSpec, gptq, layer_loss, rtn


def _layer(rows: int = 16, cols: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[:, 3] *= 8  # an outlier column, as real layers have
    x = torch.randn(1024, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.2
    h = Hessian(cols)
    h.add(x)
    return w, h.h


def _pack(q):
    from tokensieve.quantize.export.gguf import pack

    return pack(q)


@pytest.mark.parametrize("type_name", list(GRIDS))
def test_each_block_type_round_trips_exactly_through_gguf_py(type_name: str) -> None:
    """gguf-py's dequantization (the reference for llama.cpp's layouts) of the packed bytes equals tokensieve's
    dequantized weights bit for bit, for round to nearest and for GPTQ on the type's grid."""
    import gguf

    w, h = _layer()
    spec = QuantSpec(grid=GRIDS[type_name])
    for q in (rtn(w, spec), gptq(w, h, spec)):
        assert q.type == type_name
        theirs = gguf.quants.dequantize(_pack(q), gguf.GGMLQuantizationType[type_name])
        assert np.array_equal(theirs, q.dequantize().numpy())


@pytest.mark.parametrize("type_name", list(GRIDS))
def test_each_block_type_round_trips_exactly_through_llama_cpp(type_name: str) -> None:
    """llama.cpp's own ``dequantize_row_<type>`` (ggml-base, the library llama-cpp-python ships) of the packed
    bytes equals tokensieve's dequantized weights bit for bit."""
    import ctypes
    from pathlib import Path

    llama_cpp = optional("llama_cpp", "pip install 'tokensieve[llamacpp]'")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    fn = getattr(lib, "dequantize_row_" + type_name.lower().replace("_k", "_K"))
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    w, h = _layer()
    spec = QuantSpec(grid=GRIDS[type_name])
    for q in (rtn(w, spec), gptq(w, h, spec)):
        packed = np.ascontiguousarray(_pack(q))
        theirs = np.empty(w.numel(), dtype=np.float32)
        fn(packed.ctypes.data, theirs.ctypes.data, w.numel())  # rows are whole blocks: one call for them all
        assert np.array_equal(theirs.reshape(w.shape), q.dequantize().numpy())


@pytest.mark.parametrize("type_name", list(GRIDS))
def test_gptq_on_a_type_grid_gives_codes_the_type_stores(type_name: str) -> None:
    w, h = _layer()
    spec = QuantSpec(grid=GRIDS[type_name])
    q = gptq(w, h, spec)
    lo, hi = (1, 255) if type_name == "Q8_0" else (0, 2**q.bits - 1)
    assert q.codes.min() >= lo and q.codes.max() <= hi
    assert torch.equal(q.codes.float(), q.codes.float().round())
    if type_name == "Q3_K":
        d, s = q.extra["d"], q.extra["s"]
        assert torch.equal(d, d.half().float())  # the fp16 super-scale
        assert s.min() >= -32 and s.max() <= 31 and torch.equal(s, s.round())  # 6-bit sub-scales
        assert torch.equal(q.scale, d.repeat_interleave(16, 1) * s)
    elif type_name == "Q4_K":
        for k in ("d", "dmin"):
            assert torch.equal(q.extra[k], q.extra[k].half().float())
        for k in ("sc", "m"):  # 6-bit sub-block scales and mins
            assert q.extra[k].min() >= 0 and q.extra[k].max() <= 63 and torch.equal(q.extra[k], q.extra[k].round())
        assert torch.equal(q.scale, q.extra["d"].repeat_interleave(8, 1) * q.extra["sc"])
        assert torch.equal(q.offset, -(q.extra["dmin"].repeat_interleave(8, 1) * q.extra["m"]))
    else:
        assert torch.equal(q.scale, q.scale.half().float())  # fp16 scales, as stored
        if q.offset is not None:
            assert torch.equal(q.offset, q.offset.half().float())
    # error feedback still pays off on the constrained grid
    assert layer_loss(w, q.dequantize(), h) < layer_loss(w, rtn(w, spec).dequantize(), h)


def test_q3_k_falls_back_where_a_row_is_no_multiple_of_256() -> None:
    w, h = _layer(cols=576)
    q = gptq(w, h, QuantSpec(grid=GRIDS["Q3_K"]))
    assert q.type == "Q4_0"  # llama.cpp falls back too (to IQ4_NL, the same 4.5 bits per weight)


def test_written_gguf_loads_back_exactly_and_runs_in_llama_cpp(smollm2, tmp_path) -> None:
    """A SmolLM2 quantized to Q3_K (down_proj) and Q4_0 (the 576-wide linears), written as GGUF: transformers'
    own GGUF loader (gguf-py dequantization + its per-architecture layout) gives back exactly the quantized
    linears and norms; the metadata is the source's; llama.cpp loads the file and generates."""
    import gguf
    from transformers import AutoModelForCausalLM

    from tokensieve.quantize.engine import quantize_rtn
    from tokensieve.quantize.export.gguf import write_gguf
    from tokensieve.runtime.models import BUNDLED

    model = copy.deepcopy(smollm2[0])
    result = quantize_rtn(model, QuantSpec(grid=GRIDS["Q3_K"]))
    source = BUNDLED["smollm2"].gguf_path()
    written = write_gguf(model, source, tmp_path / "m.gguf", "Q3_K", result)
    assert written.types["Q3_K"] == 30 and written.types["Q4_0"] == 180
    assert 4 < written.bits_per_weight < 5.5

    ref, out = gguf.GGUFReader(source), gguf.GGUFReader(written.path)
    for name, field in ref.fields.items():
        if not name.startswith("GGUF.") and name != "general.file_type":
            assert out.fields[name].contents() == field.contents(), name

    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    mine, theirs = model.state_dict(), back.state_dict()
    for name in mine:
        if "embed" not in name and "lm_head" not in name:  # the embedding is Q8_0 by llama.cpp's rule
            assert torch.equal(mine[name], theirs[name]), name

    llama_cpp = optional("llama_cpp", "pip install 'tokensieve[llamacpp]'")
    llm = llama_cpp.Llama(str(written.path), n_ctx=128, n_threads=1, verbose=False)
    text = llm("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"]
    assert len(llm.tokenize(text.encode(), add_bos=False)) > 0

    from tokensieve.engines.gguf_run import compare

    same = compare(written.path, written.path, [list(range(100, 132))])
    assert same.kl == 0 and same.top1 == 1 and same.positions == 31 and same.ppl == same.ppl_source


def test_compressed_tensors_loads_in_transformers_with_equal_logits(smollm2, tmp_path) -> None:
    optional("compressed_tensors", "pip install 'tokensieve[export]'")
    from transformers import AutoModelForCausalLM

    from tokensieve.quantize.engine import quantize_rtn
    from tokensieve.quantize.export.compressed import write_compressed
    from tokensieve.runtime.models import load_model

    model, tok = load_model("smollm2", prepare=False)
    result = quantize_rtn(model, QuantSpec(bits=3, group=64))
    write_compressed(model, tok, result, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["format"] == "pack-quantized" and cfg["config_groups"]["group_0"]["weights"]["num_bits"] == 3
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True)
    ids = tok("Weights that really shrink, loaded back", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


def test_export_refusals_are_typed_one_line_errors(smollm2, tmp_path) -> None:
    from tokensieve.quantize.export.formats import check_exportable, gguf_source, parse_format, recipe_for
    from tokensieve.quantize.export.gguf import write_gguf
    from tokensieve.quantize.run import Recipe

    with pytest.raises(ParameterError, match="Q2_K"):
        parse_format("gguf:Q2_K")
    with pytest.raises(ParameterError, match="stores 4-bit"):
        recipe_for(parse_format("gguf:Q4_0"), Recipe(), bits=3, group=None)
    with pytest.raises(ParameterError, match="blocks are 32"):
        recipe_for(parse_format("gguf:Q4_0"), Recipe(), bits=None, group=64)
    with pytest.raises(ParameterError, match="3 or 4"):
        recipe_for(parse_format("compressed-tensors"), Recipe(), bits=8, group=64)
    with pytest.raises(ParameterError, match="cannot absorb"):
        check_exportable(smollm2[0], "inputs")
    with pytest.raises(TokenSieveError, match="source-gguf"):
        gguf_source(str(tmp_path), None)
    with pytest.raises(TokenSieveError, match="does not exist"):
        write_gguf(smollm2[0], tmp_path / "missing.gguf", tmp_path / "o.gguf", "F32")


def test_cli_export_errors_exit_2(capsys) -> None:
    from tokensieve.cli import main

    assert main(["quantize", "--format", "gguf:Q4_0", "--bits", "3", "--out", "unused"]) == 2
    assert main(["quantize", "--format", "gguf:Q2_K", "--out", "unused"]) == 2
    assert main(["quantize", "--format", "compressed-tensors", "--bits", "4", "--out", "unused"]) == 2
    assert main(["quantize", "--format", "gguf:Q4_0", "--model", "/nonexistent/x", "--out", "unused"]) == 2
    assert main(["quantize", "--format", "gguf:Q4_0", "--source-gguf", "/nonexistent.gguf", "--out", "u"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # SmolLM2's auto placement is `inputs` (a silenced channel): refused before any quantization
    assert main(["quantize", "--method", "rsq", "--format", "gguf:Q4_0", "--out", "unused.gguf"]) == 2
    assert "cannot absorb" in capsys.readouterr().err
