"""Triton kernels for sparse decoding on a GPU (optional: tokensieve imports and runs without Triton).

- ``quest_page_scores``: Quest's page bound summed over a GQA group, in one pass over the page min/max
  vectors. ``max(q_c min_c, q_c max_c) = relu(q_c) max_c + min(q_c, 0) min_c``, so the bound is two dot
  products per page with the group's positive and negative query parts.
- ``sparse_decode_attention``: one decode query per head over selected *units* of the cache (pages of
  ``page`` consecutive slots, or single slots with ``page=1``), split-K (flash-decoding): each program
  handles the G query heads of one KV head over a share of the units with an online softmax; a second
  kernel merges the shares. Units < 0 are skipped. Reading every page is dense attention by the same code.

The torch functions ``*_reference`` define what the kernels compute (the tests compare against them, on
the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:  # optional dependency: `pip install tokensieve[gpu]`
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

AVAILABLE = triton is not None


# --- references (torch) ------------------------------------------------------------------------------


def quest_page_scores_reference(q: Tensor, kmin: Tensor, kmax: Tensor) -> Tensor:
    """q [B, Hkv, G, D] (scaled), kmin/kmax [B, Hkv, P, D] -> [B, Hkv, P]: sum over the group of the bound."""
    f = torch.promote_types(q.dtype, torch.float32)
    qq = q.to(f).unsqueeze(3)
    return torch.maximum(qq * kmin.to(f).unsqueeze(2), qq * kmax.to(f).unsqueeze(2)).sum((-1, 2))


def unit_tokens(units: Tensor, page: int, n_slots: int) -> tuple[Tensor, Tensor]:
    """[B, Hkv, U] unit ids -> slot ids [B, Hkv, U * page] and whether each is a real slot."""
    slots = (units[..., None] * page + torch.arange(page, device=units.device)).flatten(-2)
    ok = (units[..., None] >= 0).expand(*units.shape, page).flatten(-2) & (slots < n_slots)
    return slots.clamp(0, n_slots - 1), ok


def sparse_decode_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, units: Tensor, page: int, scale: float
) -> Tensor:
    """q [B, H, D], k/v [B, Hkv, S, D], units [B, Hkv, U] -> [B, H, D] (float32 math, float64 for float64)."""
    b, h, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    f = torch.promote_types(q.dtype, torch.float32)
    slots, ok = unit_tokens(units.long(), page, s)
    kk = k.to(f).gather(2, slots[..., None].expand(-1, -1, -1, d))
    vv = v.to(f).gather(2, slots[..., None].expand(-1, -1, -1, d))
    qg = q.to(f).view(b, hkv, h // hkv, d)
    logits = (qg @ kk.transpose(-1, -2)) * scale
    probs = torch.softmax(logits.masked_fill(~ok[:, :, None], float("-inf")), -1)
    return (probs @ vv).view(b, h, d)


# --- kernels -----------------------------------------------------------------------------------------

if AVAILABLE:

    @triton.jit
    def _quest_kernel(
        Q, KMIN, KMAX, OUT,
        s_qb, s_qh, s_qg, s_qd,
        s_kb, s_kh, s_kp, s_kd,
        s_ob, s_oh, s_op,
        HKV, P,
        G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(0)
        b, h = bh // HKV, bh % HKV
        offs_g, offs_d = tl.arange(0, BLOCK_G), tl.arange(0, D)
        q = tl.load(
            Q + b * s_qb + h * s_qh + offs_g[:, None] * s_qg + offs_d[None, :] * s_qd,
            mask=offs_g[:, None] < G,
            other=0.0,
        ).to(tl.float32)
        q_pos = tl.sum(tl.maximum(q, 0.0), 0)  # [D]: the group's positive parts
        q_neg = tl.sum(tl.minimum(q, 0.0), 0)
        offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        ok = offs_p < P
        base = b * s_kb + h * s_kh + offs_p[:, None] * s_kp + offs_d[None, :] * s_kd
        kmax = tl.load(KMAX + base, mask=ok[:, None], other=0.0).to(tl.float32)
        kmin = tl.load(KMIN + base, mask=ok[:, None], other=0.0).to(tl.float32)
        score = tl.sum(kmax * q_pos[None, :] + kmin * q_neg[None, :], 1)
        tl.store(OUT + b * s_ob + h * s_oh + offs_p * s_op, score, mask=ok)

    @triton.jit
    def _sparse_attn_kernel(
        Q, K, V, UNITS, O_PART, M_PART, L_PART,
        s_qb, s_qh, s_qd,
        s_kb, s_kh, s_ks, s_kd,
        s_vb, s_vh, s_vs, s_vd,
        s_ub, s_uh, s_un,
        s_ob, s_oh, s_os, s_od,
        s_mb, s_mh, s_ms,
        HKV, S, N_UNITS, UNITS_PER_SPLIT, scale,
        G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, UNITS_PER_BLOCK: tl.constexpr,
    ):  # fmt: skip
        bh, split = tl.program_id(0), tl.program_id(1)
        b, h = bh // HKV, bh % HKV
        BLOCK_N: tl.constexpr = UNITS_PER_BLOCK * PAGE
        offs_g, offs_d, offs_n = tl.arange(0, BLOCK_G), tl.arange(0, D), tl.arange(0, BLOCK_N)
        q = tl.load(
            Q + b * s_qb + (h * G + offs_g)[:, None] * s_qh + offs_d[None, :] * s_qd,
            mask=offs_g[:, None] < G,
            other=0.0,
        )
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        first = split * UNITS_PER_SPLIT
        last = tl.minimum(first + UNITS_PER_SPLIT, N_UNITS)
        for u0 in range(first, last, UNITS_PER_BLOCK):
            unit_pos = u0 + offs_n // PAGE
            unit = tl.load(UNITS + b * s_ub + h * s_uh + unit_pos * s_un, mask=unit_pos < last, other=-1)
            slot = unit * PAGE + offs_n % PAGE
            ok = (unit >= 0) & (slot < S)
            k = tl.load(
                K + b * s_kb + h * s_kh + slot[:, None] * s_ks + offs_d[None, :] * s_kd, mask=ok[:, None], other=0.0
            )
            s = tl.dot(q, tl.trans(k)) * scale  # [BLOCK_G, BLOCK_N], fp32 accumulation
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            v = tl.load(
                V + b * s_vb + h * s_vh + slot[:, None] * s_vs + offs_d[None, :] * s_vd, mask=ok[:, None], other=0.0
            )
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        row = (h * G + offs_g) * s_oh
        keep = offs_g < G
        tl.store(O_PART + b * s_ob + row[:, None] + split * s_os + offs_d[None, :] * s_od, acc, mask=keep[:, None])
        mrow = b * s_mb + (h * G + offs_g) * s_mh + split * s_ms
        tl.store(M_PART + mrow, m_i, mask=keep)
        tl.store(L_PART + mrow, l_i, mask=keep)

    @triton.jit
    def _merge_kernel(
        O_PART, M_PART, L_PART, OUT,
        s_ob, s_oh, s_os, s_od,
        s_mb, s_mh, s_ms,
        s_rb, s_rh, s_rd,
        H, SPLITS,
        D: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(0)
        b, h = bh // H, bh % H
        offs_s, offs_d = tl.arange(0, BLOCK_S), tl.arange(0, D)
        ok = offs_s < SPLITS
        m = tl.load(M_PART + b * s_mb + h * s_mh + offs_s * s_ms, mask=ok, other=float("-inf"))
        l_ = tl.load(L_PART + b * s_mb + h * s_mh + offs_s * s_ms, mask=ok, other=0.0)
        m_max = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_max))
        o = tl.load(
            O_PART + b * s_ob + h * s_oh + offs_s[:, None] * s_os + offs_d[None, :] * s_od, mask=ok[:, None], other=0.0
        )
        out = tl.sum(o * w[:, None], 0) / tl.sum(l_ * w, 0)
        tl.store(OUT + b * s_rb + h * s_rh + offs_d * s_rd, out.to(OUT.dtype.element_ty))


def _require() -> None:
    if not AVAILABLE:
        raise ImportError("the sparse-decoding kernels need Triton: pip install 'tokensieve[gpu]'")


def quest_page_scores(q: Tensor, kmin: Tensor, kmax: Tensor, block_p: int = 64) -> Tensor:
    """[B, Hkv, P] float32: the GQA-summed Quest bound of each page (``quest_page_scores_reference``)."""
    _require()
    b, hkv, g, d = q.shape
    p = kmin.shape[2]
    out = torch.empty(b, hkv, p, device=q.device, dtype=torch.float32)
    grid = (b * hkv, triton.cdiv(p, block_p))
    _quest_kernel[grid](
        q, kmin, kmax, out, *q.stride(), *kmin.stride(), *out.stride(), hkv, p,
        G=g, BLOCK_G=max(2, triton.next_power_of_2(g)), D=d, BLOCK_P=block_p,
    )  # fmt: skip
    assert kmin.stride() == kmax.stride()
    return out


def sparse_decode_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    units: Tensor,
    page: int,
    scale: float,
    splits: int | None = None,
    units_per_block: int | None = None,
) -> Tensor:
    """Attention of one query per head ``q [B, H, D]`` over the units ``[B, Hkv, U]`` (int32/int64, -1 =
    none) of ``k``/``v [B, Hkv, S, D]``; returns ``[B, H, D]`` in q's dtype."""
    _require()
    b, h, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    n_units = units.shape[-1]
    upb = units_per_block or max(1, 64 // page)
    if splits is None:  # enough programs to fill the GPU, each with at least a block of work
        sm = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 8
        splits = max(1, min(triton.cdiv(n_units, upb), triton.cdiv(2 * sm, b * hkv)))
    per_split = triton.cdiv(triton.cdiv(n_units, splits), upb) * upb
    splits = triton.cdiv(n_units, per_split)
    o_part = torch.empty(b, h, splits, d, device=q.device, dtype=torch.float32)
    m_part = torch.empty(b, h, splits, device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    _sparse_attn_kernel[(b * hkv, splits)](
        q, k, v, units, o_part, m_part, l_part,
        *q.stride(), *k.stride(), *v.stride(), *units.stride(), *o_part.stride(), *m_part.stride(),
        hkv, s, n_units, per_split, scale,
        G=g, BLOCK_G=max(16, triton.next_power_of_2(g)), D=d, PAGE=page, UNITS_PER_BLOCK=upb,
    )  # fmt: skip
    out = torch.empty(b, h, d, device=q.device, dtype=q.dtype)
    _merge_kernel[(b * h,)](
        o_part, m_part, l_part, out, *o_part.stride(), *m_part.stride(), *out.stride(), h, splits,
        D=d, BLOCK_S=max(2, triton.next_power_of_2(splits)),
    )  # fmt: skip
    return out


def dense_units(b: int, hkv: int, n_slots: int, page: int, device=None) -> Tensor:
    """Every page of the cache: dense attention through the same kernel."""
    return torch.arange(math.ceil(n_slots / page), device=device, dtype=torch.int32).expand(b, hkv, -1).contiguous()
