"""SmolLM2-135M training-step time on this CPU: all parameters vs the top 8 layers, fp32 vs bf16 autocast.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/train/train_steptime.py

(The figures in docs/train.md came from the two halves of this script run separately, 3 steps each.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tokensieve.runtime.models import resolve
from tokensieve.train.tokens import token_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import print_provenance


def measure(top: int | None, batch: int, length: int, bf16: bool, steps: int = 3) -> list[float]:
    m = AutoModelForCausalLM.from_pretrained(resolve("smollm2"), dtype=torch.float32, attn_implementation="sdpa")
    m.train()
    if top is not None:
        for p in m.parameters():
            p.requires_grad_(False)
        for layer in m.get_decoder().layers[-top:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, 1000, (batch, length))
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            lp, mask = token_logprobs(m, ids, ids)
        (-(lp.sum() / mask.sum())).backward()
        opt.step()
        opt.zero_grad()
        out.append(round(time.perf_counter() - t0, 2))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for top, b, t, bf in [(None, 8, 64, False), (8, 8, 48, False), (8, 8, 48, True)]:
        print(f"train {'all' if top is None else f'top {top}'} layers, batch {b} x {t}, "
              f"{'bf16' if bf else 'fp32'}: {measure(top, b, t, bf)} s/step", flush=True)
    print_provenance()
