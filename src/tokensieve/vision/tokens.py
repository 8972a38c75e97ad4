"""The token state of one forward pass, and the two ways a method changes it: prune or merge.

``assign[b, i]`` is the current index of the token that original token ``i`` (specials, then patches) now
lives in; it is what unmerging gathers with. ``sizes`` counts the patches a token stands for (None: all 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Tokens:
    n_special: int  # CLS (+ distillation) tokens kept in front; 0 for SigLIP
    grid: tuple[int, int]  # the patch grid of the full-resolution image
    assign: Tensor  # [B, N0] long
    dropped: Tensor  # [B, N0] bool: original tokens pruned (their unmerged value is their nearest kept token's)
    sizes: Tensor | None = None  # [B, T]
    layer: int = 0  # index of the layer running now
    scale: float = 1.0
    keys: Tensor | None = None  # [B, T, dh] head-mean keys of the last attention call
    cls_attn: dict[int, Tensor] = field(default_factory=dict)  # layer -> [B, H, T] CLS attention
    qk: tuple[Tensor, Tensor] | None = None  # queries and keys of the last attention call (when asked for)
    prev: Tensor | None = None  # the previous layer's input (token transition variation)
    ttv: Tensor | None = None  # [B, T] accumulated transition variation
    calls: int = 0  # attention calls seen: the engagement check
    mlp_calls: int = 0  # MLP-norm pre-hooks run (merging between attention and MLP): the same check

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def bias(self) -> Tensor | None:
        """ToMe's proportional attention: log(size) on each key's logit, [B, 1, 1, T]."""
        return None if self.sizes is None else self.sizes.log()[:, None, None, :]


def _remap(st: Tokens, old2new: Tensor) -> None:
    st.assign = old2new.gather(1, st.assign)


def prune(x: Tensor, st: Tokens, keep: Tensor) -> Tensor:
    """Keep the special tokens and the patch tokens at ``keep`` [B, k] (patch indices); drop the rest.
    A dropped token's place in the unmerged output goes to its most similar kept token (cosine of x)."""
    ns, (b, t, d) = st.n_special, x.shape
    keep = keep.sort(1).values + ns
    idx = torch.cat([torch.arange(ns, device=x.device).expand(b, ns), keep], 1)
    kept = x.gather(1, idx[..., None].expand(-1, -1, d))
    sim = F.normalize(x, dim=-1) @ F.normalize(kept, dim=-1).transpose(1, 2)  # [B, T, K]
    old2new = sim.argmax(-1)
    old2new.scatter_(1, idx, torch.arange(idx.shape[1], device=x.device).expand(b, -1))
    was_kept = torch.zeros(b, t, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
    st.dropped |= ~was_kept.gather(1, st.assign)
    _remap(st, old2new)
    if st.sizes is not None:
        st.sizes = st.sizes.gather(1, idx)
    return kept


@dataclass
class MergePlan:
    """One bipartite merge, kept so it can be applied twice: to the residual stream before a layer's MLP,
    and again to the layer's output (ToMe merges between attention and MLP). ``old2new`` [B, T] maps each
    token to its merged slot, ``rep`` [B, T'] names one member of each slot, ``count`` [B, T'] its members,
    ``weights`` [B, T] the sizes of the tokens going in, ``sizes`` [B, T'] the sizes coming out."""

    old2new: Tensor
    rep: Tensor
    count: Tensor
    weights: Tensor
    sizes: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, T', D]: size-weighted mean of each slot's members; a slot of one token is that
        token's value exactly (no x * s / s rounding)."""
        d = x.shape[-1]
        out = torch.zeros(x.shape[0], self.sizes.shape[1], d, dtype=x.dtype, device=x.device)
        out.scatter_add_(1, self.old2new[..., None].expand(-1, -1, d), x * self.weights[..., None].to(x.dtype))
        out = out / self.sizes[..., None].to(x.dtype)
        alone = x.gather(1, self.rep[..., None].expand(-1, -1, d))
        return torch.where((self.count == 1)[..., None], alone, out)

    def spread(self, y: Tensor) -> Tensor:
        """[B, T', D] -> [B, T, D]: every token gets its slot's value (the MLP output, back onto the residual)."""
        return y.gather(1, self.old2new[..., None].expand(-1, -1, y.shape[-1]))


def match(x: Tensor, st: Tokens, metric: Tensor, a: Tensor, b_: Tensor, r: int) -> MergePlan:
    """Bipartite soft matching: each token of A (patch indices [B, Na]) finds its most similar token of B
    (cosine of ``metric`` [B, T, d]); the ``r`` best-matched A tokens go into their B partners. Tokens in
    neither set stay as they are. New order: specials and untouched tokens, unmerged A, then B."""
    ns, (bsz, t, _) = st.n_special, x.shape
    dev = x.device
    pa, pb = a + ns, b_ + ns
    m = F.normalize(metric, dim=-1)
    ma, mb = (
        m.gather(1, pa[..., None].expand(-1, -1, m.shape[-1])),
        m.gather(1, pb[..., None].expand(-1, -1, m.shape[-1])),
    )
    best, partner = (ma @ mb.transpose(1, 2)).max(-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    src, unm = order[:, :r], order[:, r:]
    dst = partner.gather(1, src)
    sizes = st.sizes if st.sizes is not None else torch.ones(bsz, t, dtype=x.dtype, device=dev)
    src_tok, unm_tok = pa.gather(1, src), pa.gather(1, unm)
    in_ab = torch.zeros(bsz, t, dtype=torch.bool, device=dev).scatter_(1, pa, True).scatter_(1, pb, True)
    rest = (~in_ab).nonzero()[:, 1].view(bsz, -1)  # specials first: they are never in A or B
    k, nu = rest.shape[1], unm.shape[1]
    old2new = torch.empty(bsz, t, dtype=torch.long, device=dev)
    ar = torch.arange(t, device=dev).expand(bsz, -1)
    old2new.scatter_(1, rest, ar[:, :k]).scatter_(1, unm_tok, k + ar[:, :nu])
    old2new.scatter_(1, pb, k + nu + ar[:, : pb.shape[1]]).scatter_(1, src_tok, k + nu + dst)
    rep = torch.cat([rest, unm_tok, pb], 1)
    n_new = rep.shape[1]
    count = torch.zeros(bsz, n_new, dtype=torch.long, device=dev).scatter_add_(1, old2new, torch.ones_like(old2new))
    new_sizes = torch.zeros(bsz, n_new, dtype=sizes.dtype, device=dev).scatter_add_(1, old2new, sizes)
    return MergePlan(old2new, rep, count, sizes, new_sizes)


def commit(st: Tokens, plan: MergePlan) -> None:
    """The state after ``plan``: merged sizes (ToMe's proportional attention) and where each patch lives."""
    st.sizes = plan.sizes
    _remap(st, plan.old2new)


def merge(x: Tensor, st: Tokens, metric: Tensor, a: Tensor, b_: Tensor, r: int) -> Tensor:
    """Match (``match``), update the state, and return the merged tokens: the layer-boundary form."""
    plan = match(x, st, metric, a, b_, r)
    commit(st, plan)
    return plan.apply(x)


def unmerge(hidden: Tensor, st: Tokens) -> Tensor:
    """[B, T, D] -> [B, N0, D]: each original token gets the output of the token it was merged into."""
    return hidden.gather(1, st.assign[..., None].expand(-1, -1, hidden.shape[-1]))
