"""Page granularity in the bench: ``snapkv:pages=16`` specs, validated at parse time, run as cells whose
kv_bytes are whole pages."""

from __future__ import annotations

import json

import pytest

import tokensieve as ts
from test_bench import tiny_llama
from tokensieve.measure.bench.methods import MethodSpec
from tokensieve.measure.bench.runner import Config, run
from tokensieve.measure.tasks import expand_tasks


def test_page_specs_parse_and_validate():
    spec = MethodSpec.parse("snapkv:window=16:pages=16:page_agg=mean")
    assert spec.page_kwargs == {"pages": 16, "page_agg": "mean"}
    assert spec.method().window == 16 and spec.label == "snapkv:window=16:pages=16:page_agg=mean"
    for bad, match in [
        ("snapkv:pages=0", "page size"),
        ("snapkv:pages=8:page_layout=row", "layout"),
        ("quest:pages=16", "prefill eviction"),
        ("ems:pages=16", "merges"),
        ("snapkv:pages=16@adakv", "allocator"),
    ]:
        with pytest.raises(ts.TokenSieveError, match=match):
            MethodSpec.parse(bad)


def test_page_cells_hold_whole_pages(byte_tok, tmp_path):
    path = tmp_path / "tiny"
    tiny_llama().save_pretrained(path)
    byte_tok.save_pretrained(path)
    cfg = Config(
        tasks=expand_tasks("fidelity"),
        lengths=[300],
        methods=[MethodSpec.parse(s) for s in ("snapkv", "snapkv:pages=16", "snapkv:pages=1:page_layout=head")],
        keeps=[0.25],
        samples=1,
        out=tmp_path / "run",
        model=str(path),
        threads=None,
    )
    cells = {c["method"]: c for c in map(json.loads, run(cfg).read_text().splitlines()) if c["type"] == "cell"}
    page = 16 * 2 * 16 * 2 * 4  # tokens x (K, V) x head dim x KV heads x float32 bytes, per layer
    paged = cells["snapkv:pages=16"]
    assert paged["kv_bytes"] % page == 0 and paged["kv_bytes"] < cells["snapkv"]["kv_bytes"]
    assert paged["kv_bytes_full"] % page == 0
    one = cells["snapkv:pages=1:page_layout=head"]  # one-token pages per head: token granularity exactly
    assert one["kv_bytes"] == cells["snapkv"]["kv_bytes"] and one["metrics"] == cells["snapkv"]["metrics"]
