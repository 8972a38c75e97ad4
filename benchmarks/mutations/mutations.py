"""Plausible bugs, kept so the tests can be shown to catch them: each is one exact text replacement in one file
and the fast tests that must fail under it. ``run.py`` applies each to a copy of the repository.

Add a family's mutations here when the family is added (its rule inverted, an off-by-one, a swapped pair)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    id: str
    what: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # the fast tests that must catch it (run with -x, real-model tests deselected)


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "mikv_rank_reversed",
        "MiKV's high-precision ranking reversed (the least important tokens stay full precision)",
        "src/tokensieve/kv/methods/mikv.py",
        "order = rank(scores, layer.valid, sinks, window)",
        "order = rank(-scores, layer.valid, sinks, window)",
        ("tests/test_oracles.py::test_mikv_keeps_the_highest_scores_in_full_precision",),
    ),
    Mutation(
        "decode_evicts_highest",
        "decode eviction evicts the highest score instead of the lowest",
        "src/tokensieve/kv/evicting/layer.py",
        "return self._select(self.rule.score(state).expand(b, hkv, s), self.budget",
        "return self._select((-self.rule.score(state)).expand(b, hkv, s), self.budget",
        ("tests/test_oracles.py::test_decode_eviction_keeps_the_highest_scores",),
    ),
    Mutation(
        "tova_first_query",
        "TOVA's decode rule reads the first new query instead of the last",
        "src/tokensieve/kv/methods/tova.py",
        'return {"last": step.probs[:, :, :, -1].mean(dim=(1, 2)).unsqueeze(1)}',
        'return {"last": step.probs[:, :, :, 0].mean(dim=(1, 2)).unsqueeze(1)}',
        ("tests/test_oracles.py::test_tova_decode_rule_reads_the_last_query",),
    ),
    Mutation(
        "gumbel_sign_flipped",
        "the Gumbel noise's sign flipped (-log(-log u) becomes log(-log u))",
        "src/tokensieve/core/scores/attention.py",
        "return u.log_().neg_().log_().neg_().unsqueeze(0).to(rows.device)",
        "return u.log_().neg_().log_().unsqueeze(0).to(rows.device)",
        ("tests/test_oracles.py::test_gumbel_noise_is_standard_gumbel",),
    ),
    Mutation(
        "adakv_no_shift",
        "AdaKV's per-head normalisation loses its shift to >= 0",
        "src/tokensieve/kv/budget/adakv.py",
        "s = (s - low).masked_fill(~e, 0.0)",
        "s = s.masked_fill(~e, 0.0)",
        (
            "tests/test_oracles.py::test_adakv_head_distributions_shift_then_normalise",
            "tests/test_oracles.py::test_adakv_head_budgets_by_hand",
        ),
    ),
    Mutation(
        "pyramid_no_slope",
        "pyramid budgets ignore their slope (every layer gets the mean)",
        "src/tokensieve/kv/budget/__init__.py",
        "raw = [bottom + (top - bottom) * i / (n_layers - 1) for i in range(n_layers)]",
        "raw = [float(budget) for i in range(n_layers)]",
        ("tests/test_oracles.py::test_pyramid_budgets_follow_their_slope",),
    ),
    Mutation(
        "scissorhands_ge",
        "Scissorhands counts attention at the uniform level too (> becomes >=)",
        "src/tokensieve/kv/methods/scissorhands.py",
        "above = (step.probs * step.n_visible > 1.0) & (step.real[:, None, None, :, None] > 0)",
        "above = (step.probs * step.n_visible >= 1.0) & (step.real[:, None, None, :, None] > 0)",
        ("tests/test_oracles.py::test_scissorhands_counts_strictly_above_uniform",),
    ),
    Mutation(
        "sparse_sinks_window_swapped",
        "the sparse layer's sinks and window swapped",
        "src/tokensieve/kv/sparse/layer.py",
        "sinks, window = self.method.protected(k)\n        idx = top_slots(",
        "window, sinks = self.method.protected(k)\n        idx = top_slots(",
        ("tests/test_oracles.py::test_sparse_layer_reads_its_sinks_and_window",),
    ),
    Mutation(
        "prune_hook_old_cache_name",
        "the prefill-pruning layer hook reads the pre-5.24 name (the bug of issue 10: pruning silently off)",
        "src/tokensieve/kv/prune/engine.py",
        "if compat.call_cache(module, kwargs) is not self.cache:",
        'if kwargs.get("past_key_values") is not self.cache:',
        ("tests/test_engagement.py::test_prune_engages_on_every_layer",),
    ),
    Mutation(
        "gptq_no_block_carry",
        "GPTQ's lazy block drops its deferred error update to the later columns (issue 26's survivor)",
        "src/tokensieve/quantize/gptq.py",
        "        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]\n",
        "",
        ("tests/test_quantize.py::test_gptq_codes_do_not_depend_on_the_lazy_block_size",),
    ),
    Mutation(
        "kvzip_pad_queries_scored",
        "kvzip's reconstruction scores a padded row's pad tokens as queries",
        "src/tokensieve/core/observe/full.py",
        'state["scored"] = (real & ((real.long().cumsum(-1) - 1) % stride == 0)).to(model.device)',
        'state["scored"] = ((real.long().cumsum(-1) - 1) % stride == 0).to(model.device)',
        ("tests/test_cache.py::test_left_padded_batch_matches_rows_compressed_alone_for_every_score",),
    ),
    Mutation(
        "surprise_first_token_from_padding",
        "surprise's first real token of a padded row keeps the NLL predicted from padding",
        "src/tokensieve/core/observe/full.py",
        "    nll[rows, first] = 0.0\n",
        "    nll[rows, first] = nll[rows, first]\n    return nll\n",
        ("tests/test_cache.py::test_left_padded_batch_matches_rows_compressed_alone_for_every_score",),
    ),
    Mutation(
        "expected_attention_rotates_backward",
        "expected_attention rotates each query away from the context's end instead of toward it",
        "src/tokensieve/kv/methods/expected_attention.py",
        "q = rotate(q, ((t - rows).float()",
        "q = rotate(q, ((rows - t).float()",
        ("tests/test_unseen.py::test_expected_attention_rotates_to_future_positions_with_real_rope",),
    ),
    Mutation(
        "expected_attention_horizon_sin_sign",
        "expected_attention's mean rotation over future positions turns the wrong way (sin term's sign)",
        "src/tokensieve/kv/methods/expected_attention.py",
        "torch.cat([-b, a], -1) * avg(torch.sin)",
        "torch.cat([b, -a], -1) * avg(torch.sin)",
        ("tests/test_unseen.py::test_expected_attention_rotates_to_future_positions_with_real_rope",),
    ),
    Mutation(
        "soft_nc_ns_keep_swapped",
        "Soft-NC keeps the important tokens' embedding elements and Soft-NS erases them (keep-probabilities swapped)",
        "src/tokensieve/explain/faithfulness.py",
        "keep = torch.cat([1 - w, w])[:, None]",
        "keep = torch.cat([w, 1 - w])[:, None]",
        ("tests/test_explain.py::test_soft_nc_ns_against_hand_worked_example",),
    ),
    Mutation(
        "soft_nc_unclipped",
        "Soft-NC leaves [0, 1] when a perturbation scores below the empty context (no clip)",
        "src/tokensieve/explain/faithfulness.py",
        "nc = ((base - s[:samples]).clamp_min(0) / max(1e-12, 1 - s0)).clamp(0, 1).mean()",
        "nc = ((base - s[:samples]).clamp_min(0) / max(1e-12, 1 - s0)).mean()",
        ("tests/test_explain.py::test_soft_nc_ns_stay_in_the_unit_interval",),
    ),
)
