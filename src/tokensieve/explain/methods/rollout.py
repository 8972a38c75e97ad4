from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokensieve.core.observe.capture import Needs
from tokensieve.core.scores.attention import attention_probs
from tokensieve.explain.base import Explainer
from tokensieve.explain.observe import observed_prefill, target_rows
from tokensieve.explain.target import Problem


@dataclass
class Rollout(Explainer):
    """Attention rollout, exact, without any ``T x T`` matrix. Rollout is ``r^T (A~_L ... A~_1)`` with
    ``A~ = (A + I) / 2`` (A averaged over heads) and ``r`` the target rows. Only that one row vector is
    needed, so it is pushed down layer by layer: ``r <- r/2 + (r A)/2``, and ``r A`` is accumulated over
    chunks of ``chunk`` query rows (``[chunk, T]`` probabilities at a time), skipping rows where ``r`` is 0.
    The prefill keeps every layer's queries (``[H, T, D]`` per layer, linear in T). Layers that are not
    observed (sliding-window layers) are skipped, as their attention never reaches far context."""

    id = "rollout"
    paper = "Quantifying Attention Flow in Transformers (Abnar & Zuidema, 2020)"
    rule = "r <- (r + r A_l) / 2 from the last layer down, r = uniform over the target rows"

    chunk: int = 64

    def attribute(self, problem: Problem) -> Tensor:
        n = problem.ids.shape[0] + len(problem.target.ids) - 1
        cache, obs = observed_prefill(problem, Needs(window=n), with_answer=True)
        r = torch.zeros(n)
        rows = target_rows(problem)
        r[rows] = 1.0 / len(rows)
        for i in sorted(obs, reverse=True):
            o, layer = obs[i], cache.layers[i]
            keys, ra = layer.keys.float(), torch.zeros(n)
            live = r.nonzero().flatten()
            for s in range(0, int(live.max()) + 1, self.chunk):
                sel = torch.arange(s, min(s + self.chunk, n))
                sel = sel[r[sel] != 0]
                if sel.numel() == 0:
                    continue
                p = attention_probs(o.queries[:, :, :, sel].float(), keys, sel.to(keys.device), layer.valid, o.scaling)
                ra[: p.shape[-1]] += (r[sel, None] * p.mean(dim=(0, 1, 2)).cpu()).sum(0)
            r = 0.5 * r + 0.5 * ra
        return r[problem.ctx_start : problem.ctx_end]
