"""Why does a compressed hybrid-attention model (Gemma-3) lose the answer? Per full-attention layer and KV head:
how many of the value's tokens the compressed cache keeps, and the attention the answer's first token pays them
on the full cache (the question unseen at compression). Also: is the value inside the sliding windows, and does
the compressed cache answer when the value's tokens are forced in (an oracle: if it does not, positions or masks
are wrong, not the scores).

    PYTHONPATH=src .venv/bin/python benchmarks/gemma3_hybrid/hybrid_diagnose.py \
        --model gemma3-270m --tokens 1000 --keep 0.25
"""

from __future__ import annotations

import argparse
import random

import torch

from tokensieve import compat
from tokensieve.kv import WindowLayer, prefill
from tokensieve.runtime.models import load_model
from tokensieve.runtime.passkey import passkey_context
from tokensieve.runtime.prompts import PromptFormat


def value_span(tok, context_ids: list[int], key: str) -> list[int]:
    """Indices of the context tokens whose text overlaps the value's digits (every occurrence)."""
    out, text = [], ""
    for i, t in enumerate(context_ids):
        piece = tok.decode([t])
        text += piece
        if any(c.isdigit() for c in piece) and any(d in key for d in piece if d.isdigit()):
            window = text[-(len(key) + len(piece)) :]
            if any(key[j : j + 2] in window for j in range(len(key) - 1)) or piece.strip() in key:
                out.append(i)
    return out


def first_token_attention(pre, q_ids: list[int]) -> dict[int, torch.Tensor]:
    """Per full layer ``[Hkv, T]``: the attention the last question token (it predicts the answer's first token)
    pays each context slot, summed over the query heads of each KV head, on a fork of the full cache."""
    cache, seen = pre.cache.fork(), {}
    t = pre.context_ids.shape[1]

    def grab(layer, query, scaling):
        hkv = layer.keys.shape[1]
        q = query[0, :, -1].float()  # [H, D]
        k = layer.keys[0].float().repeat_interleave(q.shape[0] // hkv, 0)  # [H, T', D]
        p = torch.softmax((k @ q[:, :, None])[..., 0] * scaling, -1)  # [H, T']
        seen[layer.layer_idx] = p.view(hkv, -1, p.shape[-1]).sum(1)[:, :t]

    for layer in cache.sieve_layers:
        layer.on_attention = grab
    with torch.inference_mode():
        pre.model(**compat.with_cache(pre.model, cache, input_ids=torch.tensor([q_ids]), use_cache=True))
    return seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--depth", type=float, default=0.3)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--methods", default="kvzip,snapkv", help="ids, each with :name=value;name=value parameters")
    ap.add_argument("--windows", type=int, default=1, help="also cut the sliding windows, full layers whole")
    ap.add_argument("--oracle", type=int, default=1, help="also keep the needle by hand (checks positions, masks)")
    args = ap.parse_args()
    model, tok = load_model(args.model)
    key = str(random.Random(args.tokens).randint(1000000, 9999999))
    task = passkey_context(tok, args.tokens, args.depth, key)
    fmt = PromptFormat(tok)
    pre = prefill(model, tok, task.context, methods=[m.split(":")[0] for m in args.methods.split(",")])
    ids = pre.context_ids[0].tolist()
    span = value_span(tok, ids, key)
    t = len(ids)
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    print(f"T={t} value {key} at tokens {span}; sliding window {window}: value inside it: "
          f"{bool(window) and min(span) >= t - window + 1}")  # fmt: skip
    q_ids = fmt.question_ids(task.question, task.answer_prefix)
    att = first_token_attention(pre, q_ids)
    full_b = pre.cache.kv_bytes()
    full = pre.full().answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=12)
    print(f"full cache answers {full!r}")
    for i, a in att.items():
        s = a[:, span].sum(-1)
        print(f"  layer {i}: attention of the answer's first token to the value, per KV head: {s.tolist()}")
    lo, hi = min(span) - 8, max(span) + 4  # the needle sentence
    for extra in (0, int(args.keep * t)) if args.oracle else ():
        ctx = pre.full()
        for layer in ctx.cache.sieve_layers:
            keep = set(range(lo, hi)) | {0} | set(range(t - 16, t))
            rest = [j for j in range(t) if j not in keep]
            keep |= set(random.Random(0).sample(rest, max(0, min(len(rest), extra - len(keep)))))
            idx = torch.tensor(sorted(keep))[None, None].expand(1, layer.keys.shape[1], -1)
            layer.evict(idx)
        ans = ctx.answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=12)
        print(f"oracle (needle + sink + last 16 + random, {idx.shape[-1]} slots per full layer): {ans!r}")
    for w in (16, 32, 64, 128, 256) if args.windows else ():  # full layers whole, sliding windows cut to w tokens
        ctx = pre.full()
        for i, layer in enumerate(ctx.cache.layers):
            if isinstance(layer, compat.SlidingLayer):
                compat.set_cache_layer(ctx.cache, i, WindowLayer.from_sliding(layer, i, w))
        ans = ctx.answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=12)
        print(
            f"sliding windows cut to {w} tokens, full layers whole: {ans!r}; bytes {ctx.cache.kv_bytes() / full_b:.3f}"
        )
    for m in args.methods.split(","):
        name, _, params = m.partition(":")
        kw = dict(p.split("=") for p in params.split(";")) if params else {}
        ctx = pre.compress(name, keep=args.keep, **kw)
        ans = ctx.answer(task.question, answer_prefix=task.answer_prefix, max_new_tokens=12)
        print(f"{m} keep={args.keep}: answers {ans!r} ({task.correct(ans)}); bytes {ctx.stats.ratio:.3f} of full")
        for layer in ctx.cache.sieve_layers:
            idx = layer.token_index
            if idx is None:
                continue
            rows = idx[0] if idx.dim() == 3 else idx
            for h in range(rows.shape[0]):
                kept = set(rows[h].tolist()) if rows.dim() == 2 else set(rows.tolist())
                got = [j for j in span if j in kept]
                print(f"  layer {layer.layer_idx} head {h}: keeps {len(got)}/{len(span)} value tokens, "
                      f"{len(kept)} slots")  # fmt: skip


if __name__ == "__main__":
    main()
