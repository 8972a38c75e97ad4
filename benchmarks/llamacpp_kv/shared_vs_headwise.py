"""The cost of one shared selection: the same pass-key contexts (500 tokens, depths 0.2 and 0.6), kvzip and snapkv
(question unseen) at keep 0.5 / 0.25, through the HF path (kvzip's per-head global budget, kvzip per layer,
snapkv) and inside llama.cpp (one selection for every layer and head, aggregate max / mean / vote).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llamacpp_kv/shared_vs_headwise.py
"""

from __future__ import annotations

from tokensieve.engines.llamacpp import Engine, Settings, compress
from tokensieve.kv.pipeline import generate
from tokensieve.runtime.models import load_model
from tokensieve.runtime.passkey import passkey_context


def main() -> None:
    model, tok = load_model("smollm2")
    eng = Engine("smollm2", Settings(n_ctx=2048, n_batch=256, n_ubatch=128))
    for depth in (0.2, 0.6):
        for keep in (0.5, 0.25):
            pk = passkey_context(tok, 500, depth, key="48151")
            for m, kw in (("kvzip", {}), ("kvzip", {"scope": "layer"}), ("snapkv", {})):
                a = generate(model, tok, pk.context, pk.question, m, keep=keep, max_new_tokens=10,
                             answer_prefix=pk.answer_prefix, **kw)  # fmt: skip
                print(f"hf\t{depth}\t{keep}\t{m}{kw or ''}\t{pk.correct(a.text)}\t{a.text[:30]!r}", flush=True)
            pk = passkey_context(eng.tokenizer, 500, depth, key="48151")
            for m in ("kvzip", "snapkv"):
                for agg in ("max", "mean", "vote"):
                    compress(eng, pk.context, m, keep=keep, aggregate_by=agg)
                    a = eng.answer(pk.question, 10, pk.answer_prefix)
                    print(f"llama.cpp\t{depth}\t{keep}\t{m}/{agg}\t{pk.correct(a.text)}\t{a.text[:30]!r}", flush=True)


if __name__ == "__main__":
    main()
