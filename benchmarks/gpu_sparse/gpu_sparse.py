"""Sparse decoding kernels on a GPU vs dense SDPA, at 7-8B attention shapes (random data; speed needs no
trained weights). One decode query per head over a bf16 KV cache of one layer:

- dense SDPA (PyTorch, GQA) and dense Triton (the sparse kernel reading every page: the same code path);
- quest: page bound kernel + top pages + page-sparse attention kernel;
- double_sparsity: label-cache scores (16 channels) + top tokens + token-sparse attention kernel;
- hisa: block-mean scores + top blocks + exact scores inside them + top tokens + attention kernel.

Every kernel is first checked against a float64 reference on fresh random inputs (outputs poisoned
before each run); times are ``triton.testing.do_bench`` medians, eager and replayed from a CUDA graph
(the selection pipeline is several launches; graphs remove the launch gaps), rotating over several
KV buffers when one would fit in L2. Finally the kernels run inside ``SparseCache`` on a random-weight
model on the GPU and must match the torch path. Usage (on the GPU machine):

    PYTHONPATH=src python benchmarks/gpu_sparse/gpu_sparse.py --out $OUT/gpu_sparse
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch

from tokensieve.compat import with_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import write_rows, write_table


def load_kernels():
    """The kernel and selection modules; standalone from their files if the package cannot be imported
    (the GPU machine may carry another transformers version; the kernels need only torch and Triton)."""
    try:
        from tokensieve.kv.sparse import kernels, select

        return kernels, select
    except Exception as e:  # pragma: no cover - depends on the machine
        import importlib.util
        import sys

        print(f"tokensieve did not import ({e!r}); loading the kernel files alone", flush=True)
        here = Path(__file__).resolve().parent
        roots = [p / "src" / "tokensieve" / "kv" / "sparse" for p in (here, here.parent, here.parents[1])]
        root = next(r for r in roots if (r / "kernels.py").exists())
        mods = []
        for name in ("kernels", "select"):
            spec = importlib.util.spec_from_file_location(f"_ts_{name}", root / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            mods.append(mod)
        return tuple(mods)


SHAPES = {"llama3-8b": (32, 8, 128), "qwen2-7b": (28, 4, 128)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def bench(fn, graph: bool, n_sets: int = 1) -> float:
    """Median milliseconds of ``fn`` (eager), or of replaying CUDA graphs of it (one per input set, in turn,
    since ``fn`` rotates over the sets and a graph replays the buffers it captured)."""
    import triton

    if not graph:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graphs = []
    for _ in range(n_sets):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        graphs.append(g)
    turn = [0]

    def replay() -> None:
        turn[0] = (turn[0] + 1) % len(graphs)
        graphs[turn[0]].replay()

    return triton.testing.do_bench(replay, warmup=25, rep=200, return_mode="median")


def main() -> None:
    import torch.nn.functional as F

    K, select = load_kernels()
    page_minmax = select.page_minmax

    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b", choices=list(SHAPES))
    p.add_argument("--contexts", default="8192,16384,32768")
    p.add_argument("--reads", default="0.125,0.0625")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--skip-kernels", action="store_true", help="only the integration check")
    p.add_argument("--out", default="gpu_sparse")
    args = p.parse_args()
    assert torch.cuda.is_available() and K.AVAILABLE, "needs a CUDA GPU and Triton"
    dev, dtype = torch.device("cuda"), torch.bfloat16
    h, hkv, d = SHAPES[args.shape]
    g, scale, page = h // hkv, d**-0.5, 16
    props = torch.cuda.get_device_properties(dev)
    rows, checks = [], []
    torch.manual_seed(0)

    # --- correctness on fresh inputs (float64 references) ------------------------------------------
    for s in (1000, 4099):
        q = torch.randn(2, h, d, device=dev, dtype=dtype)
        k, v = (torch.randn(2, hkv, s, d, device=dev, dtype=dtype) for _ in range(2))
        for pg in (1, 16):
            n_units = math.ceil(s / pg)
            units = torch.stack([torch.randperm(n_units, device=dev)[: n_units // 5] for _ in range(2 * hkv)])
            units = units.view(2, hkv, -1).int()
            units[0, 0, :3] = -1
            ref = K.sparse_decode_attention_reference(q.double(), k.double(), v.double(), units, pg, scale)
            out = torch.full_like(q, float("nan"))
            out.copy_(K.sparse_decode_attention(q, k, v, units, pg, scale))
            checks.append(
                {
                    "check": f"sparse attention page={pg} S={s}",
                    "rel_err": rel(out, ref),
                    "all_written": bool(torch.isfinite(out).all()),
                }
            )
        dense = K.sparse_decode_attention(q, k, v, K.dense_units(2, hkv, s, 16, dev), 16, scale)
        sdpa = F.scaled_dot_product_attention(
            q.double()[:, :, None], k.double(), v.double(), scale=scale, enable_gqa=True
        )[:, :, 0]
        checks.append({"check": f"dense via kernel S={s}", "rel_err": rel(dense, sdpa), "all_written": True})
        kmin, kmax = page_minmax(k, None, page)
        qg = q.view(2, hkv, g, d)
        got = K.quest_page_scores(qg, kmin.to(dtype), kmax.to(dtype))
        want = K.quest_page_scores_reference(qg.double(), kmin.to(dtype).double(), kmax.to(dtype).double())
        checks.append({"check": f"quest page bound S={s}", "rel_err": rel(got, want), "all_written": True})
    for c in checks:
        print(f"{c['check']:<36} rel err {c['rel_err']:.2e}  written {c['all_written']}", flush=True)

    # --- timings ----------------------------------------------------------------------------------
    for batch in [] if args.skip_kernels else [int(x) for x in args.batches.split(",")]:
        for s in [int(x) for x in args.contexts.split(",")]:
            reads = [float(x) for x in args.reads.split(",")]
            rows += time_context(batch, s, reads, (h, hkv, d), args.shape, props)
            torch.cuda.empty_cache()

    # --- integration: SparseCache on the GPU, kernels vs the torch path --------------------------------
    try:
        integ = integration_check(dev)
    except Exception as e:  # report, keep the timings
        integ = {"check": "integration", "error": repr(e)[:500]}
    print(integ, flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = (
        f"PYTHONPATH=src python benchmarks/gpu_sparse/gpu_sparse.py --shape {args.shape} --contexts {args.contexts} "
        f"--reads {args.reads} --batches {args.batches} --out <dir>/gpu_sparse"
    )
    write_rows((out.with_suffix(".jsonl")), [*checks, *rows, integ])
    lines = [
        f"# Sparse decoding kernels vs dense SDPA on {props.name} ({args.shape}: {h} query heads, {hkv} KV heads, "
        f"head dim {d}, bf16)",
        "",
        f"Command: `{cmd}`",
        "",
        "One layer's decode attention (one query per head) over a KV cache of `context` tokens; the sparse rows",
        "include their selection (scores, top-k) and read `read` of the tokens. Median microseconds",
        "(triton.testing.do_bench), eager and replayed from a CUDA graph; speed-up vs dense SDPA in the same mode.",
        "",
        "| batch | context | variant | eager us | graph us | vs SDPA (eager) | vs SDPA (graph) |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['variant']} | {r['eager_ms'] * 1e3:.1f} | "
            f"{r['graph_ms'] * 1e3:.1f} | {r['speedup_eager']:.2f}x | {r['speedup_graph']:.2f}x |"
        )
    lines += ["", "Correctness (relative error vs a float64 reference, fresh random inputs):", ""]
    lines += [f"- {c['check']}: {c['rel_err']:.2e} (every output written: {c['all_written']})" for c in checks]
    lines += ["", f"Integration (SparseCache on the GPU, kernel path vs torch path): {json.dumps(integ)}"]
    lines += ["", "End to end (one decode step of an 8B-shaped model): see benchmarks/gpu_decode/gpu_e2e.py."]
    write_table(out.with_suffix(".md"), lines)
    print("\n".join(lines))


def time_context(batch: int, s: int, reads: list[float], shape: tuple[int, int, int], name: str, props) -> list[dict]:
    """Every variant at one batch size and context length."""
    import torch.nn.functional as F

    K, select = load_kernels()
    block_means, page_minmax = select.block_means, select.page_minmax

    dev, dtype = torch.device("cuda"), torch.bfloat16
    h, hkv, d = shape
    g, scale, page, block, channels = h // hkv, d**-0.5, 16, 64, 16
    kv_bytes = 2 * batch * hkv * s * d * 2
    n_sets = max(1, min(8, math.ceil(3 * props.L2_cache_size / kv_bytes)))  # defeat L2 reuse
    sets = []
    for _ in range(n_sets):
        k = torch.randn(batch, hkv, s, d, device=dev, dtype=dtype)
        v = torch.randn(batch, hkv, s, d, device=dev, dtype=dtype)
        kmin, kmax = page_minmax(k, None, page)
        ch = torch.randint(0, d, (hkv, channels), device=dev).sort(-1).values
        labels = k.gather(-1, ch[None, :, None, :].expand(batch, -1, s, -1)).contiguous()
        means = block_means(k.float(), None, block).to(dtype)
        sets.append((k, v, kmin.to(dtype).contiguous(), kmax.to(dtype).contiguous(), ch, labels, means))
    q = torch.randn(batch, h, d, device=dev, dtype=dtype)
    qg = q.view(batch, hkv, g, d)
    turn = [0]
    dense_u = K.dense_units(batch, hkv, s, page, dev)
    arange_block = torch.arange(block, device=dev)

    def pick():
        turn[0] = (turn[0] + 1) % n_sets
        return sets[turn[0]]

    def sdpa():
        k, v = pick()[:2]
        return F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)

    def dense_triton():
        k, v = pick()[:2]
        return K.sparse_decode_attention(q, k, v, dense_u, page, scale)

    def quest(n_pages: int):
        k, v, kmin, kmax = pick()[:4]
        units = K.quest_page_scores(qg, kmin, kmax).topk(n_pages, -1, sorted=False).indices
        return K.sparse_decode_attention(q, k, v, units, page, scale)

    def attention_only(n_pages: int):
        k, v = pick()[:2]
        return K.sparse_decode_attention(q, k, v, dense_u[..., :n_pages], page, scale)

    def double_sparsity(n_tok: int):
        k, v, _, _, ch, labels, _ = pick()
        qc = qg.gather(-1, ch[None, :, None, :].expand(batch, -1, g, -1))
        scores = (qc @ labels.transpose(-1, -2)).float().softmax(-1).sum(2)  # [B, Hkv, S]
        return K.sparse_decode_attention(q, k, v, scores.topk(n_tok, -1, sorted=False).indices, 1, scale)

    def hisa(n_tok: int, nb: int):
        k, v, *_, means = pick()
        top = (qg @ means.transpose(-1, -2)).float().sum(2).topk(nb, -1, sorted=False).indices  # [B, Hkv, nb]
        slots = (top[..., None] * block + arange_block).flatten(2)
        kk = k.gather(2, slots[..., None].expand(-1, -1, -1, d))
        fine = (qg @ kk.transpose(-1, -2)).float().softmax(-1).sum(2)
        units = slots.gather(-1, fine.topk(n_tok, -1, sorted=False).indices)
        return K.sparse_decode_attention(q, k, v, units, 1, scale)

    def quest_scores(n_pages: int):
        kmin, kmax = pick()[2:4]
        return K.quest_page_scores(qg, kmin, kmax)

    noise = torch.randn(batch, hkv, s, device=dev)

    def topk_only(n: int, k: int):
        return noise[..., :n].topk(k, -1, sorted=False).indices

    variants = {"dense sdpa": (sdpa, 1.0), "dense triton": (dense_triton, 1.0)}
    for read in reads:
        n_tok = max(page, int(read * s))
        n_pages = max(1, n_tok // page)
        nb = max(1, min(s // block, math.ceil(2 * n_tok / block)))
        frac = f"1/{round(1 / read)}"
        variants[f"quest {frac}"] = (partial(quest, n_pages), read)
        variants[f"attention only {frac}"] = (partial(attention_only, n_pages), read)
        variants[f"double_sparsity {frac}"] = (partial(double_sparsity, n_tok), read)
        variants[f"hisa {frac}"] = (partial(hisa, n_tok, nb), read)
        variants[f"  quest scores only {frac}"] = (partial(quest_scores, n_pages), read)
        variants[f"  top-k pages only {frac}"] = (partial(topk_only, s // page, n_pages), read)
        variants[f"  top-k tokens only {frac}"] = (partial(topk_only, s, n_tok), read)
    rows, base = [], (1.0, 1.0)
    for vname, (fn, read) in variants.items():
        eager = bench(fn, False)
        try:
            graph = bench(fn, True, n_sets)
        except Exception as e:  # a variant that cannot be captured is reported eager only
            print(f"  graph capture failed for {vname}: {e}", flush=True)
            graph = float("nan")
        if vname == "dense sdpa":
            base = (eager, graph)
        row = {
            "shape": name, "batch": batch, "context": s, "variant": vname, "read": read,
            "eager_ms": eager, "graph_ms": graph, "speedup_eager": base[0] / eager,
            "speedup_graph": base[1] / graph if graph == graph else float("nan"),
            "kv_bytes": kv_bytes, "device": props.name,
        }  # fmt: skip
        rows.append(row)
        print(
            f"B={batch} S={s:>6} {vname:<26} eager {eager * 1e3:8.1f} us  graph {graph * 1e3:8.1f} us  "
            f"x{row['speedup_eager']:.2f} / x{row['speedup_graph']:.2f}",
            flush=True,
        )
    return rows


def integration_check(dev) -> dict:
    """A random-weight Llama on the GPU decodes through SparseCache with and without the kernels."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import tokensieve as ts
    from tokensieve.kv.sparse import SparseCache, layer

    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    model = ts.prepare(LlamaForCausalLM(cfg).to(dev, torch.bfloat16).eval())
    prompt = torch.randint(3, 1000, (1, 3000), device=dev)
    out = {}
    for method in ("quest", "hisa", "tokenselect"):
        res = {}
        for use in (True, False):
            layer.USE_KERNELS = use
            cache = SparseCache(model, method, read=0.125)
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = model.generate(
                    prompt, **with_cache(model, cache), max_new_tokens=16, min_new_tokens=16, do_sample=False
                )
            torch.cuda.synchronize()
            res[use] = (gen[0, 3000:].tolist(), time.perf_counter() - t0)
        layer.USE_KERNELS = True
        same = sum(a == b for a, b in zip(res[True][0], res[False][0], strict=True))
        out[method] = {
            "same_tokens_of_16": same,
            "kernel_s": round(res[True][1], 3),
            "torch_s": round(res[False][1], 3),
        }
    return {"check": "integration", **out}


if __name__ == "__main__":
    main()
