"""Observations that need the whole prefilled cache (or the prefill's final hidden states) at once.

Eviction during the prefill sees one layer at a time; these passes run after it, on a fork of the full
cache: KVzip's context reconstruction (the attention a model pays to its cache while it repeats the
context) and the context's own token surprise (NLL). Both are chunked: no T x T matrix, no [T, vocab].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokensieve.compat import attention_outputs, with_cache
from tokensieve.core.observe.protocol import ObservedCache
from tokensieve.core.scores.attention import attention_probs, group_queries
from tokensieve.errors import EmptyContextError


def reconstruction_scores(
    model: torch.nn.Module,
    cache: ObservedCache,
    context_ids: Tensor,
    context_mask: Tensor | None,
    prompt_ids: Sequence[int],
    chunk: int = 512,
    stride: int = 1,
    query_chunk: int = 256,
    sample: float = 1.0,
    compute: torch.dtype = torch.float32,
    gradient: bool = False,
    key_weights: dict[int, Tensor] | None = None,
    group: str = "max",
) -> dict[int, Tensor]:
    """Per full-attention layer ``[B, Hkv, T]``: the max over reconstruction queries (and over the query heads
    of each GQA group; ``group="mean"``: each query head's max, averaged over the group, as kvpress's KVCompose)
    of the attention they pay to each cached context slot.

    Each chunk of the context is teacher-forced after ``prompt_ids`` on its own fork of the prefilled cache
    (the cache is never changed), so a chunk attends to the whole context plus the prompt and itself. The pass
    computes its layers' attention itself (eager, fp32, ``query_chunk`` rows per softmax block) so that one
    softmax gives both the output and the score. Only every ``stride``-th reconstruction query is scored, and
    with ``sample`` < 1 only that fraction of the chunks is reconstructed (evenly spread; the cost falls with it,
    and a skipped chunk's slots score only by what the reconstructed chunks' queries pay them).

    ``compute=torch.bfloat16`` runs the pass's matmuls (its linear layers under CPU/GPU autocast, and the
    attention) in bfloat16, the scores kept in fp32: on CPUs with AMX or AVX512-BF16 the pass
    is faster, and the scores approximate the fp32 ones to bf16's 3 digits (their ranking is what is used).

    KVgrad's weights: ``key_weights`` (per layer ``[B, Hkv, G, T]``, one per query head and slot) multiply each
    attention weight by its key before the max; with ``gradient`` each reconstruction row is also multiplied by
    ``probe_gradients``' norm for that row, from a forward and backward pass of the same chunk on its own fork.
    """
    b, t = context_ids.shape
    if t == 0:
        raise EmptyContextError("kvzip needs a context to reconstruct: the context is empty")
    prompt = torch.tensor(list(prompt_ids), dtype=torch.long).expand(b, -1)
    out: dict[int, Tensor] = {}
    # reconstruction rows in the current forward (the rows after the prompt), and which of them are real tokens
    state: dict = {"n": 0, "scored": None, "rows": None}
    per_head = group == "mean"

    def attend(layer, query: Tensor, value: Tensor, scaling: float) -> tuple[Tensor, None]:
        # one softmax serves both the layer's output (eager attention, the teacher-forced forward) and the score
        b_, h, n, d = query.shape
        hkv = layer.keys.shape[1]
        q = group_queries(query, hkv).to(compute)
        shape = (b, hkv, h // hkv, t) if per_head else (b, hkv, t)
        score = out.setdefault(layer.layer_idx, torch.zeros(shape, device=query.device))
        base = layer.n_held - n  # the token index of the first new row
        first = n - state["n"]  # rows before this are the prompt's: not reconstruction queries
        outs = []
        keys = layer.keys.to(compute)
        row_w = state["rows"][layer.layer_idx] if state["rows"] is not None else None  # [B, n]
        key_w = key_weights[layer.layer_idx][..., None, :] if key_weights is not None else None  # [B, Hkv, G, 1, T]
        for lo in range(0, n, query_chunk):
            hi = min(n, lo + query_chunk)
            probs = _block_probs(q[:, :, :, lo:hi], keys, base + lo, base, layer.valid, scaling)
            v = value[:, :, None, : probs.shape[-1]].to(compute)  # keys past a row are unseen
            outs.append(torch.matmul(probs, v))
            if key_w is not None or row_w is not None:  # KVgrad: weigh each attention weight (the output is taken)
                probs = probs[..., :t].float()
                probs = probs * key_w if key_w is not None else probs
                probs = probs * row_w[:, None, None, lo:hi, None] if row_w is not None else probs
            # probabilities are >= 0, so rows that are not scored can be zeroed (the output is already taken);
            # reducing the whole block is much faster on CPU than reducing a row-sliced view
            if state["scored"] is not None:  # a padded batch: each row's own real queries, every stride-th
                scored = torch.zeros(b_, hi - lo, dtype=torch.bool, device=probs.device)
                rows = torch.arange(lo, hi, device=probs.device) - first
                inside = rows >= 0
                scored[:, inside] = state["scored"][:, rows[inside]]
                if not scored.any():
                    continue
                probs = probs * scored[:, None, None, :, None].to(probs.dtype)
            else:
                start = max(first, lo) + (-(max(first, lo) - first)) % stride
                if start >= hi:
                    continue
                if stride > 1:
                    probs = probs[:, :, :, start - lo :: stride].contiguous()
                elif start > lo:
                    probs[:, :, :, : start - lo].zero_()
            if per_head:
                torch.maximum(score, probs[..., :t].amax(dim=3).float(), out=score)
                continue
            flat = probs.reshape(b_, hkv, -1, probs.shape[-1])  # (group head, row) as one axis: a faster reduction
            torch.maximum(score, flat[..., :t].amax(dim=2).float(), out=score)
        o = torch.cat(outs, 3).reshape(b_, h, n, d).to(query.dtype)
        return o.transpose(1, 2).contiguous(), None

    for i, (ids_c, mask_c) in enumerate(_chunks(context_ids, context_mask, chunk)):
        if int((i + 1) * sample) == int(i * sample):  # chunk i is not among the sampled ones
            continue
        state["n"] = ids_c.shape[1]
        if mask_c is None:
            state["scored"] = None
        else:  # a chunk's pad tokens are not reconstruction queries; the stride counts each row's real tokens
            real = mask_c.bool()
            state["scored"] = (real & ((real.long().cumsum(-1) - 1) % stride == 0)).to(model.device)
        ids = torch.cat([prompt, ids_c], -1)
        kw = {}
        if mask_c is not None:
            ones = torch.ones(b, prompt.shape[1], dtype=mask_c.dtype)
            new = torch.cat([ones, mask_c], -1)
            kw["attention_mask"] = torch.cat([context_mask, new], -1).to(model.device)
            # a chunk's pad tokens take no position: each row's real tokens sit where they sit for the row alone
            kw["position_ids"] = (t + new.long().cumsum(-1) - 1).clamp_min(t).to(model.device)
        if gradient:
            real = None if mask_c is None else torch.cat([torch.zeros_like(prompt).bool(), mask_c.bool()], -1)
            state["rows"] = probe_gradients(model, cache, ids.to(model.device), kw, prompt.shape[1], real)
        fork = cache.fork()
        for layer in fork.sieve_layers:
            layer.attend_with = attend
        low = compute != torch.float32
        with torch.inference_mode(), torch.autocast(model.device.type, dtype=compute, enabled=low):
            model(**with_cache(model, fork, input_ids=ids.to(model.device), use_cache=True, logits_to_keep=1, **kw))
    if not out:
        raise RuntimeError("the reconstruction pass observed no layer: is the model prepared (tokensieve.prepare)?")
    return {i: s.mean(2) for i, s in out.items()} if per_head else out


def probe_gradients(
    model: torch.nn.Module, cache: ObservedCache, ids: Tensor, kw: dict, first: int, real: Tensor | None = None
) -> dict[int, Tensor]:
    """KVgrad's probe weights, per decoder layer ``[B, n]``: for each row p of one teacher-forced forward of ``ids``
    on a fork of ``cache``, ``||dPhi / da_p||``, where ``a_p`` is the layer's attention output at p (what it adds
    to the residual stream) and ``Phi = sum_p ||h_p^L||^2`` over the rows from ``first`` on (the reconstruction
    rows; ``real`` [B, n] leaves padding out), ``h^L`` the last decoder layer's output before the final norm.
    One forward and one backward pass (fp32) through the frozen model: gradients are taken with respect to the
    activations only (``autograd.grad``), so no parameter's ``.grad`` is touched."""
    acts: dict[int, Tensor] = {}
    last: list[Tensor] = []
    with torch.inference_mode(False), torch.enable_grad():
        with attention_outputs(model, acts.__setitem__, last.append):
            model(**with_cache(model, cache.fork(), input_ids=ids, use_cache=True, logits_to_keep=1, **kw))
        if not last or not acts:
            raise RuntimeError("kvgrad's gradient pass observed no decoder layer")
        h = last[-1][:, first:].float()
        if real is not None:
            h = h * real[:, first:, None].to(h.device, h.dtype)
        order = sorted(acts)
        grads = torch.autograd.grad(h.square().sum(), [acts[i] for i in order], allow_unused=True)
    return {
        i: (g.detach().float().norm(dim=-1) if g is not None else acts[i].new_zeros(acts[i].shape[:2]).float())
        for i, g in zip(order, grads, strict=True)
    }


def _chunks(ids: Tensor, mask: Tensor | None, chunk: int) -> list[tuple[Tensor, Tensor | None]]:
    """The reconstruction's chunks: ``chunk`` consecutive real tokens of each row, counted from the row's first real
    token (so a left-padded row is cut where the row alone is cut), left-padded to the longest row's chunk."""
    b, t = ids.shape
    if mask is None:
        return [(ids[:, lo : lo + chunk], None) for lo in range(0, t, chunk)]
    real = mask.bool()
    n = real.sum(-1)
    out = []
    for lo in range(0, int(n.max()), chunk):
        parts = [ids[r, t - int(n[r]) :][lo : lo + chunk] for r in range(b)]
        width = max(len(x) for x in parts)
        c_ids = torch.zeros(b, width, dtype=ids.dtype)
        c_mask = torch.zeros(b, width, dtype=mask.dtype)
        for r, x in enumerate(parts):
            if len(x):
                c_ids[r, width - len(x) :] = x
                c_mask[r, width - len(x) :] = 1
        out.append((c_ids, c_mask))
    return out


def _block_probs(q: Tensor, k: Tensor, row0: int, past: int, valid: Tensor | None, scaling: float) -> Tensor:
    """Softmax rows ``row0 .. row0 + n`` over the keys they see. Every new row sees all ``past`` cached slots, so
    only the new tokens' columns need the causal mask; padding (rare: batches) takes the general path."""
    if valid is not None:
        rows = torch.arange(row0, row0 + q.shape[3], device=q.device)
        return attention_probs(q.float(), k.float(), rows, valid, scaling)
    b, hkv, g, n, d = q.shape
    t = row0 + n
    logits = torch.matmul((q * scaling).reshape(b, hkv, g * n, d), k[:, :, :t].transpose(-1, -2)).view(b, hkv, g, n, t)
    rows = torch.arange(row0, t, device=q.device)
    cols = torch.arange(past, t, device=q.device)
    logits[..., past:].masked_fill_(cols[None, :] > rows[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1)  # in the compute dtype: a bf16 -> fp32 softmax is 4x slower on CPU


def token_nll(
    model: torch.nn.Module, hidden: Tensor, ids: Tensor, chunk: int = 256, valid: Tensor | None = None
) -> Tensor:
    """``-log p(x_t | x_<t)`` ``[B, T]`` from the final (normed) hidden states ``[B, T, d]``, through the output
    embedding ``chunk`` rows at a time (never a [T, vocab] tensor). Each row's first real token (``valid``
    [B, T]: a left-padded batch), which nothing predicts, gets its row's largest NLL (it is the sink: keep it);
    padding gets 0."""
    head = model.get_output_embeddings()
    b, t = ids.shape
    nll = torch.zeros(b, t, dtype=torch.float32, device=hidden.device)
    with torch.inference_mode():
        for lo in range(0, t - 1, chunk):
            hi = min(t - 1, lo + chunk)
            logits = head(hidden[:, lo:hi]).float()
            target = ids[:, lo + 1 : hi + 1].to(logits.device)
            nll[:, lo + 1 : hi + 1] = torch.logsumexp(logits, -1) - logits.gather(-1, target[..., None])[..., 0]
    if valid is None:
        nll[:, 0] = nll[:, 1:].amax(-1) if t > 1 else 0.0
        return nll
    valid = valid.bool().to(nll.device)
    first = valid.long().argmax(-1)  # a padded row's first real token was "predicted" from padding: not a loss
    nll = nll.masked_fill(~valid, 0.0)
    rows = torch.arange(b, device=nll.device)
    nll[rows, first] = 0.0
    nll[rows, first] = nll.masked_fill(~valid, float("-inf")).amax(-1).clamp_min(0.0) if t > 1 else 0.0
    return nll
