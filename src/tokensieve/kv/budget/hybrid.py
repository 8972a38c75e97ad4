"""``keep`` on a hybrid-attention model (sliding-window and full-attention layers): the share of the whole cache's
bytes, split between the two layer types.

Gemma-3 270M holds five sliding layers (512-token windows) per full layer, so at 1-2k tokens the windows hold
56-72% of the cache: compressing the full layers alone cannot reach keep=0.25. Policies (``hybrid=``):

- ``full-first`` (default): the sliding windows shrink first, to ``min_window`` context tokens each, and the full
  layers get the rest (never less than ``keep`` of their own slots); what full layers cannot use goes back to the
  windows. Measured best on Gemma-3 (benchmarks/results/gemma3_unseen.md): long-range retrieval lives in the full
  layers, and sliding layers answer from the last few dozen tokens.
- ``even``: every layer keeps ``keep`` of the slots it holds, windows and full layers alike.
- ``full-only``: the windows stay whole and the full layers are compressed further; a budget below what the
  windows alone hold is refused (one-line ``BudgetError``).

Slots of both layer types are assumed to cost the same bytes (true of every hybrid model transformers builds with
one head shape); the bytes actually held are measured afterwards (``Stats.ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokensieve.errors import BudgetError, check_choice, check_count

POLICIES = ("full-first", "even", "full-only")
KEYS = ("hybrid", "min_window")  # the keyword params that are the plan's, not the method's


@dataclass(frozen=True)
class Hybrid:
    policy: str = "full-first"
    min_window: int = 32

    @classmethod
    def pop(cls, params: dict[str, Any]) -> Hybrid:
        """Take ``hybrid`` / ``min_window`` out of keyword params (the defaults without them)."""
        policy = str(params.pop("hybrid", cls.policy))
        check_choice("hybrid", policy, POLICIES)
        window = params.pop("min_window", cls.min_window)
        window = int(window) if isinstance(window, str) and window.isdigit() else window  # from the command line
        return cls(policy, check_count("min_window", window))

    def split(self, keep: float, n_tokens: int, n_full: int, n_sliding: int, window_held: int) -> tuple[int, int]:
        """``(tokens per full layer, context tokens per sliding layer)`` holding ``keep`` of the cache's slots:
        ``n_full`` layers of ``n_tokens`` slots and ``n_sliding`` windows of ``window_held`` slots."""
        total = n_full * n_tokens + n_sliding * window_held
        target = keep * total
        if self.policy == "even" or n_full == 0:
            return max(1, round(keep * n_tokens)), max(1, min(window_held, round(keep * window_held)))
        if self.policy == "full-only":
            full = (target - n_sliding * window_held) / n_full
            if full < 1:
                share = (n_sliding * window_held + n_full) / total
                raise BudgetError(
                    f"keep={keep} cannot be met with hybrid='full-only': the sliding windows alone hold {share:.1%} "
                    f"of the cache here; use keep >= {share:.3f} or hybrid='full-first' / 'even'"
                )
            return min(n_tokens, round(full)), window_held
        floor = min(window_held, self.min_window)
        full = max(keep * n_tokens, (target - n_sliding * floor) / max(1, n_full))
        full = min(n_tokens, max(1, round(full)))
        window = (target - n_full * full) / n_sliding if n_sliding else 0
        return full, max(1, min(window_held, round(window)))
