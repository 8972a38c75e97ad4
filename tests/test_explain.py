"""Explanations: every attribution method against an oracle on a tiny random model, the faithfulness
figures against hand-computed values, words from offsets, and the verbalization's numbers."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import make_model, twin
from tokensieve.core.observe.hooks import prepare
from tokensieve.explain import EXPLAINERS, ExplainError, Problem, Target, get_explainer
from tokensieve.explain import faithfulness as faith
from tokensieve.explain.methods.reagent import ReAGent
from tokensieve.explain.replace import BaselineReplacer, PredictionReplacer
from tokensieve.explain.units import score_units, word_units
from tokensieve.explain.verbalize import verbalize

CTX = slice(2, 18)


def tiny(dtype=torch.float32, alt=None, position=None, arch="llama"):
    model = prepare(make_model(arch).to(dtype))
    ids = torch.randint(3, 128, (22,), generator=torch.Generator().manual_seed(1))
    return Problem(model, ids, CTX.start, CTX.stop, Target([5, 7, 9], alternative=alt, position=position), 0)


def dense_prob(model, prompt: torch.Tensor, answer: list[int], position=None) -> torch.Tensor:
    """Oracle: full logits over every row, then the geometric-mean probability of the answer."""
    x = torch.cat([prompt, torch.tensor(answer[:-1])])[None]
    logp = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0].double(), -1)
    rows = torch.arange(prompt.numel() - 1, prompt.numel() - 1 + len(answer))
    lp = logp[rows, torch.tensor(answer)]
    return lp[position].exp() if position is not None else lp.mean().exp()


@pytest.mark.parametrize("kind", ["answer", "position", "contrastive"])
def test_target_score_matches_dense_logits(kind):
    p = tiny(alt=[11, 12] if kind == "contrastive" else None, position=1 if kind == "position" else None)
    with torch.no_grad():
        want = dense_prob(p.model, p.ids, [5, 7, 9], 1 if kind == "position" else None)
        if kind == "contrastive":
            want = want - dense_prob(p.model, p.ids, [11, 12])
    assert float(p.score(p.ids[None])[0]) == pytest.approx(float(want), abs=1e-6)


def test_nothing_replaced_is_the_plain_prompt_bit_for_bit():
    p = tiny()
    none = torch.zeros(1, p.n_context, dtype=torch.bool)
    assert torch.equal(p.replaced(none)[0], p.ids)
    assert torch.equal(p.score(p.replaced(none)), p.score(p.ids[None]))


def test_grad_x_input_matches_autograd_and_finite_differences():
    p = tiny(torch.float64)
    got = get_explainer("grad_x_input").attribute(p)
    # autograd on the full, independent computation
    emb = p.model.get_input_embeddings()
    full = torch.cat([p.ids, torch.tensor([5, 7])])
    e = emb(full[None]).detach().requires_grad_(True)
    logp = torch.log_softmax(p.model(inputs_embeds=e, use_cache=False).logits[0], -1)
    rows = torch.arange(21, 24)
    value = logp[rows, torch.tensor([5, 7, 9])].mean().exp()
    (g,) = torch.autograd.grad(value, e)
    want = (g * e)[0, CTX].sum(-1).detach()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-9)
    # finite differences: the sum of grad x input is the derivative along the context embeddings
    x = emb(p.ids[None]).detach()
    v = torch.zeros_like(x)
    v[:, CTX] = x[:, CTX]
    h = 1e-3  # smaller steps hit rounding: parts of the model compute in fp32 even when it is fp64
    with torch.no_grad():
        fd = (p.score_embeds(x + h * v) - p.score_embeds(x - h * v)) / (2 * h)
    assert float(got.sum()) == pytest.approx(float(fd), rel=1e-3)


def test_integrated_gradients_completeness():
    """IG's attributions sum to s(x) - s(baseline) (exact as the steps grow; the midpoint rule is close)."""
    p = tiny(torch.float64)
    got = get_explainer("integrated_gradients", steps=16).attribute(p)
    base = torch.ones(1, p.n_context, dtype=torch.bool)
    gap = float(p.score(p.ids[None])[0] - p.score(p.replaced(base))[0])
    assert float(got.sum()) == pytest.approx(gap, rel=1e-2, abs=1e-6)


@pytest.mark.parametrize("width", [1, 3])
def test_occlusion_matches_direct_recomputation(width):
    p = tiny()
    got = get_explainer("occlusion", width=width).attribute(p)
    with torch.no_grad():
        base = dense_prob(p.model, p.ids, [5, 7, 9])
        for s in range(0, p.n_context, width):
            ids = p.ids.clone()
            ids[CTX.start + s : CTX.start + min(s + width, p.n_context)] = 0
            drop = float(base - dense_prob(p.model, ids, [5, 7, 9]))
            for t in range(s, min(s + width, p.n_context)):
                assert float(got[t]) == pytest.approx(drop, abs=1e-6)


def dense_attentions(p: Problem, with_answer: bool) -> tuple[torch.Tensor, ...]:
    ref = twin(p.model)
    ref.set_attn_implementation("eager")
    seq = torch.cat([p.ids, torch.tensor(p.target.ids[:-1])]) if with_answer else p.ids
    with torch.no_grad():
        return ref(input_ids=seq[None], output_attentions=True, use_cache=False).attentions  # T x T: oracle only


def test_attention_matches_dense_mean():
    p = tiny()
    att = dense_attentions(p, True)
    rows = torch.arange(21, 24)
    want = torch.stack([a[0][:, rows].mean(dim=(0, 1)) for a in att]).mean(0)[CTX]
    torch.testing.assert_close(get_explainer("attention").attribute(p), want, rtol=1e-4, atol=1e-6)
    last = att[-1][0][:, rows].mean(dim=(0, 1))[CTX]
    torch.testing.assert_close(get_explainer("attention", layers="last").attribute(p), last, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("position", [None, 2])
def test_rollout_matches_dense_matrix_product(position):
    p = tiny(position=position)
    att = dense_attentions(p, True)
    n = att[0].shape[-1]
    roll = torch.eye(n)
    for a in att:  # R = A~_L ... A~_1
        roll = (0.5 * a[0].mean(0) + 0.5 * torch.eye(n)) @ roll
    rows = torch.arange(21, 24) if position is None else torch.tensor([21 + position])
    want = roll[rows].mean(0)[CTX]
    torch.testing.assert_close(get_explainer("rollout", chunk=5).attribute(p), want, rtol=1e-4, atol=1e-7)


def test_tova_score_as_explanation_matches_dense_last_row():
    p = tiny()
    att = dense_attentions(p, False)
    per = []
    for a in att:
        s = a[0][:, -1].mean(0)
        per.append((s - s.min()) / (s.max() - s.min()))
    torch.testing.assert_close(get_explainer("tova").attribute(p), torch.stack(per).mean(0)[CTX], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["snapkv", "h2o", "tova", "keyformer", "knorm", "streaming"])
def test_kv_scores_explain(method):
    assert method in EXPLAINERS
    got = get_explainer(method).attribute(tiny())
    assert got.shape == (CTX.stop - CTX.start,) and torch.isfinite(got).all()


def test_kv_scores_that_act_on_the_cache_are_not_explainers():
    assert "razor" not in EXPLAINERS and "mikv" not in EXPLAINERS
    with pytest.raises(ExplainError.__mro__[1]):
        get_explainer("razor")


def test_reagent_stopping_rule_matches_direct_check():
    p = tiny()
    r = ReAGent(replacer=BaselineReplacer())
    r.replacer.fit(p)
    imp = torch.linspace(0, 1, p.n_context)
    keep = round(0.3 * p.n_context)
    ids = p.ids.clone()
    ids[CTX.start : CTX.stop - keep] = 0  # everything but the top 30% (the largest importances, at the end)
    x = torch.cat([ids, torch.tensor([5, 7])])[None]
    with torch.no_grad():
        top = p.model(input_ids=x, use_cache=False).logits[0, 21:24].topk(3, -1).indices
    want = all(t in top[i] for i, t in enumerate([5, 7, 9]))
    assert r.stopped(p, imp, torch.Generator()) == want


def test_reagent_stops_at_the_first_step_the_rule_holds(monkeypatch):
    p = tiny()
    calls = []

    def stopped(self, problem, importance, gen):
        calls.append(1)
        return len(calls) == 3

    monkeypatch.setattr(ReAGent, "stopped", stopped)
    r = ReAGent(max_steps=50)
    out = r.attribute(p)
    assert r.steps_run == 3 and out.sum() == pytest.approx(1.0) and (out > 0).all()
    r2 = ReAGent(max_steps=2)
    calls.clear()
    r2.attribute(p)
    assert r2.steps_run == 2  # the cap


def test_reagent_update_rule_and_seed():
    """With a target that depends on one token only, that token's importance rises to the top."""
    p = tiny()

    class OneToken(Problem):
        def score(self, ids, batch=8):
            return (ids[:, CTX.start + 4] == self.ids[CTX.start + 4]).float()

    q = OneToken(p.model, p.ids, p.ctx_start, p.ctx_end, p.target, 0)
    r = ReAGent(max_steps=40, replacer=BaselineReplacer())
    r.stopped = lambda *a: False  # type: ignore[method-assign]
    out = r.attribute(q)
    assert int(out.argmax()) == 4
    again = ReAGent(max_steps=40, replacer=BaselineReplacer())
    again.stopped = lambda *a: False  # type: ignore[method-assign]
    assert torch.equal(out, again.attribute(q))  # seeded


def test_prediction_replacer_never_keeps_the_original_token():
    p = tiny()
    rep = PredictionReplacer(top=4)
    rep.fit(p)
    masks = torch.ones(3, p.n_context, dtype=torch.bool)
    ids = rep(masks, torch.Generator().manual_seed(0))
    assert (ids[:, CTX] != p.ids[CTX]).all() and torch.equal(ids[:, : CTX.start], p.ids[: CTX.start].expand(3, -1))


class Additive(Problem):
    """A stand-in model for AOPC: the target is the summed weight of the context tokens not replaced."""

    weights = torch.tensor([0.4, 0.1, 0.2, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0])

    dim = 4000  # embedding width: Soft-NC/NS drop single elements, so a token's kept share is ~ its keep-probability

    def score(self, ids, batch=8):
        kept = ids[:, self.ctx_start : self.ctx_end] != self.baseline_id
        return (kept.float() * self.weights).sum(-1)

    def embed(self, ids):
        return torch.ones(*ids.shape, self.dim)

    def score_embeds(self, prompt):
        """The summed weight of each context token times the share of its embedding elements kept."""
        return (prompt[:, self.ctx_start : self.ctx_end].mean(-1) * self.weights).sum(-1)


def test_aopc_against_hand_computed_example():
    p = Additive(None, torch.arange(1, 11), 0, 10, Target([1]), 0)
    scores = torch.tensor([5.0, 1, 3, 0, 4, 0, 0, 0, 0, 0])  # ranks tokens 0, 4, 2, 1, ...
    row = faith.aopc(p, scores, base=1.0)
    # n = 10: k% -> max(1, round(k/10)) tokens = 1, 1, 1, 2, 5
    comp = [0.4, 0.4, 0.4, 0.7, 1.0]  # weight removed
    suff = [0.6, 0.6, 0.6, 0.3, 0.0]  # weight outside the kept top tokens
    assert row["comprehensiveness"] == pytest.approx(sum(comp) / 5)
    assert row["sufficiency"] == pytest.approx(sum(suff) / 5)
    assert row["comp@20"] == pytest.approx(0.7) and row["suff@50"] == pytest.approx(0.0, abs=1e-7)


def test_evaluate_normalizes_by_random_and_soft_scores_are_bounded():
    p = Additive(None, torch.arange(1, 11), 0, 10, Target([1]), 0)
    good = Additive.weights.clone()
    out = faith.evaluate(p, {"good": good, "bad": -good}, n_random=4, samples=16)
    assert out["good"]["comprehensiveness"] > out["good"]["comprehensiveness_random"] > out["bad"]["comprehensiveness"]
    assert out["good"]["comprehensiveness_ratio"] > 1 > out["bad"]["comprehensiveness_ratio"]
    assert out["good"]["sufficiency"] < out["bad"]["sufficiency"]
    assert out["good"]["soft_nc"] > out["bad"]["soft_nc"] and out["good"]["soft_ns"] > out["bad"]["soft_ns"]


def test_soft_nc_ns_against_hand_worked_example():
    """Zhao & Aletras (2023): Bernoulli masks on embedding elements, keep-probability 1 - w (NC) or w (NS)."""
    p = Additive(None, torch.arange(1, 11), 0, 10, Target([1]), 0)
    # w = 1 for tokens 0, 2, 4 (weights 0.4, 0.2, 0.3), else 0: the masks are certain. base 1.0, empty 0.0, so S0 = 0.
    # NC: tokens 0, 2, 4 erased -> s = 0.1 -> NC = (1 - 0.1) / (1 - 0) = 0.9; NS: only they kept -> s = 0.9 -> 0.9
    row = faith.soft(p, (Additive.weights > 0.15).float(), base=1.0, samples=3, seed=0)
    assert row["soft_nc"] == pytest.approx(0.9) and row["soft_ns"] == pytest.approx(0.9)
    # w = [1, 0.5, 0, ...]: token 1 keeps about half of its embedding elements in every single draw (a soft
    # perturbation), so s = 0.1 x 0.5 + 0.5 = 0.55 for NC and 0.4 + 0.05 = 0.45 for NS; whole-token replacement
    # would give 0.5 or 0.6 (NC 0.5 or 0.4), never 0.45
    row = faith.soft(p, torch.tensor([2.0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), base=1.0, samples=1, seed=3)
    assert row["soft_nc"] == pytest.approx(0.45, abs=0.01) and row["soft_ns"] == pytest.approx(0.45, abs=0.01)


def _top_weight(weights: torch.Tensor, scores: torch.Tensor, count: int) -> float:
    """Oracle: the weight of the ``count`` highest-scoring tokens, by a plain Python sort."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return sum(float(weights[i]) for i in order[:count])


def test_random_reference_is_the_mean_of_n_hand_computed_draws():
    import statistics

    p = Additive(None, torch.arange(1, 11), 0, 10, Target([1]), 0)
    good = Additive.weights.clone()
    out = faith.evaluate(p, {"good": good, "bad": -good}, n_random=3, samples=2, seed=5)
    # the draws: three uniform vectors from a generator seeded with the problem's seed (the documented contract)
    gen = torch.Generator().manual_seed(5)
    draws = [torch.rand(10, generator=gen) for _ in range(3)]
    counts = [1, 1, 1, 2, 5]  # n = 10: k% of KS -> max(1, round(k / 10)) tokens
    comp = [sum(_top_weight(Additive.weights, d, c) for c in counts) / 5 for d in draws]
    top1 = [_top_weight(Additive.weights, d, 1) for d in draws]
    for name in ("good", "bad"):  # every method on a problem is compared with the same draws
        row = out[name]
        assert row["comprehensiveness_random"] == pytest.approx(sum(comp) / 3)
        assert row["comprehensiveness_random_sd"] == pytest.approx(statistics.stdev(comp))
        assert row["comp@1_random"] == pytest.approx(sum(top1) / 3)
        assert row["comp@1_random_sd"] == pytest.approx(statistics.stdev(top1))
        assert row["comprehensiveness_ratio"] == pytest.approx(row["comprehensiveness"] / (sum(comp) / 3))
        assert row["n_random"] == 3
    one = faith.evaluate(p, {"good": good}, n_random=1, samples=2, seed=5)["good"]
    assert one["comprehensiveness_random"] == pytest.approx(comp[0])
    assert one["comprehensiveness_random_sd"] != one["comprehensiveness_random_sd"]  # one draw has no spread
    with pytest.raises(ValueError, match="n_random"):
        faith.evaluate(p, {"good": good}, n_random=0)


class Offset(Additive):
    """The target never falls below 0.5: the empty context still scores 0.5, so only 1.0 of it is removable."""

    def score(self, ids, batch=8):
        return 0.5 + super().score(ids, batch)

    def score_embeds(self, prompt):
        return 0.5 + super().score_embeds(prompt)


def test_saturation_is_the_share_of_the_removable_score_removed_by_the_top_percent():
    good = Additive.weights.clone()  # its top 1% (one token) is token 0, weight 0.4
    row = faith.evaluate(Additive(None, torch.arange(1, 11), 0, 10, Target([1]), 0), {"g": good}, n_random=2)["g"]
    assert row["target"] == pytest.approx(1.0) and row["target_empty"] == pytest.approx(0.0)
    assert row["saturation@1"] == pytest.approx(0.4)
    row = faith.evaluate(Offset(None, torch.arange(1, 11), 0, 10, Target([1]), 0), {"g": good}, n_random=2, seed=7)
    row = row["g"]
    # base 1.5, empty 0.5: 0.4 of a removable 1.0, not 0.4 / 1.5
    assert row["target"] == pytest.approx(1.5) and row["target_empty"] == pytest.approx(0.5)
    assert row["saturation@1"] == pytest.approx(0.4)
    gen = torch.Generator().manual_seed(7)
    draws = [torch.rand(10, generator=gen) for _ in range(2)]
    assert row["saturation@1_random"] == pytest.approx(sum(_top_weight(Additive.weights, d, 1) for d in draws) / 2)


def test_logprob_target_is_the_log_of_the_probability_target():
    p = tiny()
    lp = Problem(p.model, p.ids, CTX.start, CTX.stop, Target([5, 7, 9], measure="logprob"), 0)
    with torch.no_grad():
        want = dense_prob(p.model, p.ids, [5, 7, 9]).log()  # the oracle's mean per-token log-probability
    got = lp.score(lp.ids[None])[0]
    assert float(got) == pytest.approx(float(want), abs=1e-5) and float(got) < 0
    masks = torch.zeros(2, CTX.stop - CTX.start, dtype=torch.bool)
    masks[1, :4] = True
    assert torch.allclose(lp.score(lp.replaced(masks)), p.score(p.replaced(masks)).log(), atol=1e-5)
    with pytest.raises(ExplainError, match="measure"):
        Target([5], measure="odds")


class Signed(Additive):
    """Token 1 pulls the target down: erasing token 0 alone scores below the empty context."""

    weights = torch.tensor([0.8, -0.5, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    dim = 64


def test_soft_nc_ns_stay_in_the_unit_interval():
    p = Signed(None, torch.arange(1, 11), 0, 10, Target([1]), 0)
    base = float(p.score_embeds(p.embed(p.ids[None]))[0])  # 0.5; the empty context scores 0
    gen = torch.Generator().manual_seed(0)
    rows = [faith.soft(p, torch.rand(10, generator=gen), base, samples=4, seed=i) for i in range(30)]
    rows.append(faith.soft(p, torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), base, samples=2, seed=0))
    assert rows[-1]["soft_nc"] == 1.0  # (0.5 - (-0.3)) / 0.5 = 1.6 unclipped
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("soft_nc", "soft_ns"))


def test_rank_agreement_and_needle_recall():
    a = torch.tensor([1.0, 2, 3, 4])
    assert faith.spearman(a, a) == pytest.approx(1) and faith.kendall(a, -a) == pytest.approx(-1)
    b = torch.tensor([1.0, 3, 2, 4])  # one discordant pair of six
    assert faith.kendall(a, b) == pytest.approx(4 / 6) and faith.spearman(a, b) == pytest.approx(0.8)
    scores = torch.arange(100.0)
    needle = torch.zeros(100, dtype=torch.bool)
    needle[[99, 98, 50]] = True
    r = faith.needle_recall(scores, needle)
    assert r["needle_recall@1"] == pytest.approx(1 / 3) and r["needle_recall@5"] == pytest.approx(2 / 3)
    assert r["needle_top1"] == 1.0


def test_a_multi_digit_number_is_one_unit():
    text = "The pass key is 7143229.\nRemember it, pass-key!"
    offsets = [(0, 3), (3, 8), (8, 12), (12, 15), (15, 16)] + [(16 + i, 17 + i) for i in range(7)] + [(23, 24)]
    offsets += [(24, 25), (25, 33), (33, 36), (36, 37), (37, 42), (42, 43), (43, 46), (46, 47)]
    units = word_units(text, offsets)
    want = ["The", "pass", "key", "is", "7143229", ".", "Remember", "it", ",", "pass-key", "!"]
    assert [u.text for u in units] == want
    num = units[4]
    assert (num.start, num.end, num.line) == (4, 12, 1) and units[6].line == 2  # the space token joins the number


def test_verbalization_numbers_come_from_the_attribution():
    text = "The pass key is 7143229.\nRemember it."
    offsets = [(0, 3), (3, 8), (8, 12), (12, 15), (15, 16)] + [(16 + i, 17 + i) for i in range(7)] + [(23, 24)]
    offsets += [(24, 25), (25, 33), (33, 36), (36, 37)]
    scores = [0.0, 0.2, 0.1, 0.0, 0.0, 0.1, 0.1, 0.05, 0.05, 0.1, 0.0, 0.05, 0.0, 0.0, 0.1, -0.3, 0.0]
    units = score_units(word_units(text, offsets), scores)
    sentence = verbalize("7143229", units, "occlusion")
    shares = [int(x) for x in re.findall(r"\((\d+)%\)", sentence)]
    want = sorted((u for u in units if u.share > 0), key=lambda u: -u.share)[:3]
    assert shares == [round(100 * u.share) for u in want]
    # by hand: the number's tokens hold 0.45 of the 0.85 positive mass
    assert "'7143229' in line 1 (53%)" in sentence and sentence.startswith("The answer '7143229' rests mostly on")


def test_bad_input_errors():
    p = tiny()
    with pytest.raises(ExplainError, match="width"):
        get_explainer("occlusion", width=0).attribute(p)
    with pytest.raises(ExplainError, match="empty"):
        Target([])
    with pytest.raises(ExplainError.__mro__[1], match="unknown explain method"):
        get_explainer("nope")


def test_needle_mask_marks_every_occurrence():
    ctx = "a 123 b 123"
    offsets = [(0, 1), (1, 2), (2, 4), (4, 5), (5, 7), (7, 8), (8, 11)]
    assert faith.needle_mask(ctx, offsets, ["123"]).tolist() == [False, False, True, True, False, False, True]


def test_adjacent_top_words_merge_into_a_span():
    from tokensieve.explain.units import spans

    text = "The pass key is 7143229.\nRemember it."
    offsets = [(0, 3), (3, 8), (8, 12), (12, 15), (15, 16)] + [(16 + i, 17 + i) for i in range(7)] + [(23, 24)]
    offsets += [(24, 25), (25, 33), (33, 36), (36, 37)]
    scores = [0.0, 0.3, 0.2, 0.0, 0.0] + [0.05] * 7 + [0.0, 0.0, 0.1, 0.05, 0.0]  # positive mass 1.0
    units = score_units(word_units(text, offsets), scores)
    best = spans(text, units, 2)
    assert best[0].text == "pass key" and best[0].share == pytest.approx(0.5)
    assert best[1].text == "7143229" and best[1].share == pytest.approx(0.35)
    sentence = verbalize("7143229", units, "occlusion", 2, text)
    assert sentence.startswith("The answer '7143229' rests mostly on 'pass key' in line 1 (50%)")


def test_kv_score_with_kvzip_reads_its_reconstruction_pass():
    """Issue 23: a KV score read as an explanation runs the method's whole-prefill pass, as compression does:
    kvzip's scores are its reconstruction attention, min-max scaled per layer, mean over heads and layers."""
    from tokensieve import prefill
    from tokensieve.explain import KVScore
    from tokensieve.kv import get_method

    p = tiny()
    got = KVScore(method="kvzip").attribute(p)
    pre = prefill(p.model, None, p.ids[None], methods=["kvzip"])
    per = []
    for own, _shared in get_method("kvzip").whole_pass(pre).values():  # {layer: (score [B, Hkv, T], shared)}
        s = own.float().mean(dim=(0, 1))
        per.append((s - s.min()) / (s.max() - s.min()))
    torch.testing.assert_close(got, torch.stack(per).mean(0)[CTX], rtol=1e-5, atol=1e-7)


def test_kv_score_with_lagkv_is_finite_and_keeps_its_kept_tail_on_top():
    """Issue 23: lagkv keeps its tail with +inf; as an explanation the tail counts as each row's largest score."""
    p = tiny()
    got = get_explainer("lagkv", method_params={"lag": 4}).attribute(p)
    assert torch.isfinite(got).all()
    # 22 prompt tokens, lag 4: tokens 16.. have no full next chunk (+inf): scaled to 1 in every layer
    assert torch.equal(got[16 - CTX.start :], torch.ones(CTX.stop - 16))
    assert bool((got[: 16 - CTX.start] < 1).all())
