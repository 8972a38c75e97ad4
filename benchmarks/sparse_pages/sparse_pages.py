"""The seven sparse decoders read in whole pages (16, 32 tokens; layer or head layout) vs their own granularity.

Every cell decodes from the same prefilled cache (``SparseCache.adopt``), teacher-forced on the dense greedy
continuation of a prose prompt, with the selection measured at every step: attention mass and recall of
the read set against the exact top-k, the fraction of K/V bytes read, and greedy agreement / NLL against
dense decoding. ``token`` = the decoder as it is (Quest at its own 16-token pages); ``layer`` = one page set
for every KV head of a layer (a page table unchanged); ``head`` = each KV head its own pages (a per-head index).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_pages/sparse_pages.py --lengths 1024,2048 --read 0.125 \
        --steps 24 \
        --out benchmarks/sparse_pages/results/smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import command, continuation_ids, step_loop, write_results


def main() -> None:
    import tokensieve as ts
    from tokensieve.core.ops.memory import cpu_threads
    from tokensieve.kv import SPARSE, SparseCache, get_sparse
    from tokensieve.kv.sparse.paged import SHARED_ACROSS_HEADS, PagedRead

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--read", type=float, default=0.125)
    p.add_argument("--pages", default="16,32")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--methods", default=",".join(SPARSE))
    p.add_argument("--out", default="benchmarks/sparse_pages/results/smollm2")
    a = p.parse_args()
    cmd = command("sparse_pages/sparse_pages.py", a, env="OMP_NUM_THREADS=1")
    torch.set_num_threads(1)
    model, tok = ts.load_model(a.model)

    rows = []
    for length in [int(x) for x in a.lengths.split(",")]:
        ids = continuation_ids(tok, length)
        pre = ts.prefill(model, tok, ids)
        for layer in pre.cache.layers:  # transformers 5.24 layers lost dtype/device, which adopt() copies
            if layer.is_initialized and not hasattr(layer, "dtype"):
                layer.dtype, layer.device = layer.keys.dtype, layer.keys.device
        dense = step_loop(model, pre.cache.fork(), pre.last_logits, a.steps, None)["tokens"]
        for method in a.methods.split(","):
            cells = [("token", None, get_sparse(method))]
            for size in [int(x) for x in a.pages.split(",")]:
                for layout in ("layer",) if method in SHARED_ACROSS_HEADS else ("layer", "head"):  # one set: equal
                    inner = get_sparse(method, **({"page": size} if method == "quest" else {}))
                    cells.append((layout, size, PagedRead(inner=inner, page=size, layout=layout)))
            for layout, size, m in cells:
                sc = SparseCache(model, m, read=a.read, tokenizer=tok, measure=True).adopt(pre.cache)
                fid = step_loop(model, sc, pre.last_logits, len(dense), dense)
                rep = sc.report()
                row = {
                    "context": ids.shape[1],
                    "method": method,
                    "granularity": layout,
                    "page": size,
                    "shared_across_heads": method in SHARED_ACROSS_HEADS,
                    "agree": fid["agree"],
                    "nll": fid["nll"],
                    **{k: rep.get(k) for k in ("read_fraction", "attended_fraction", "recall", "attention_mass")},
                    "steps": a.steps,
                    "command": cmd,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = [
        f"# Sparse decoders in pages on {a.model} (CPU, {cpu_threads()} cores, 1 thread)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Read budget {a.read} of the held tokens per step; {a.steps} teacher-forced steps per cell on one prose",
        "prompt per length. `mass` / `recall` = the read set against the exact top-k of the true attention",
        "(GQA mean), averaged over layers and steps; `agree` / `NLL` vs the dense greedy tokens.",
        "",
        "| context | method | maps onto | granularity | page | read | attended | recall | mass | agree | NLL |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        maps = "page table" if r["shared_across_heads"] else "per-head index"
        lines.append(
            f"| {r['context']} | {r['method']} | {maps} | {r['granularity']} | {r['page'] or '-'} | "
            f"{r['read_fraction']:.3f} | {r['attended_fraction']:.3f} | {r['recall']:.3f} | "
            f"{r['attention_mass']:.3f} | {r['agree']:.3f} | {r['nll']:.3f} |"
        )
    write_results(Path(a.out), rows, lines)


if __name__ == "__main__":
    main()
