"""Token-weighted fine-tuning: oracle tests of every rule on small tensors, and the model-facing parts on tiny
random models (the per-token log-probs, the prompt attention, the prompt-free pass, Trainer and loop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model, requires
from tokensieve.errors import TokenSieveError
from tokensieve.train import (
    DFT,
    SFT,
    ContextReliance,
    Critical,
    ExcessLoss,
    SSToken,
    TokenBatch,
    TShirt,
    critical_weights,
    dft_loss,
    excess_loss_weights,
    rule,
    sstoken_score,
    token_dpo_loss,
    token_logprobs,
    token_loss,
)
from tokensieve.train.attention import prompt_attention
from tokensieve.train.base import minmax, top_fraction
from tokensieve.train.data import collate, inject_noise
from tokensieve.train.loop import frozen_copy, train
from tokensieve.train.loss import free_logprobs, perturbed_logprobs
from tokensieve.train.methods.tshirt import informative_tokens, tshirt_scores


def _batch(seed: int = 0, b: int = 3, t: int = 12, vocab: int = 128, prompts=(4, 3, 5), lengths=(12, 10, 9)):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(b):
        ids = torch.randint(1, vocab, (lengths[i],), generator=g)
        labels = ids.clone()
        labels[: prompts[i]] = -100
        items.append({"input_ids": ids, "labels": labels, "noise": (torch.arange(lengths[i]) == prompts[i] + 1).long()})
    return collate(items, pad_id=0)


def _oracle_logp(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # oracle only
    target = batch["labels"][:, 1:]
    lp = logits[:, :-1].log_softmax(-1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
    lp = F.pad(lp, (0, 1))
    mask = F.pad(target != -100, (0, 1))
    return lp.masked_fill(~mask, 0), mask


# ---- weighting rules: oracles on small tensors ------------------------------------------------------------

def test_excess_loss_with_zero_reference_is_top_k_by_loss():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(4, 10, generator=g) * 5
    mask = torch.rand(4, 10, generator=g) > 0.2
    w = excess_loss_weights(logp, torch.zeros_like(logp), mask, 0.3)
    loss = (-logp)[mask]
    k = int((mask.sum() * 0.3).ceil())
    expected = torch.zeros_like(logp, dtype=torch.bool)
    expected[mask] = loss >= loss.topk(k).values.min()
    assert torch.equal(w.bool(), expected)
    assert int(w.sum()) == k


def test_excess_loss_ranks_by_the_difference_not_the_loss():
    logp = torch.tensor([[-5.0, -1.0, -3.0, -2.0]])
    ref = torch.tensor([[-5.0, -0.1, -0.5, -2.0]])  # token 0: hard for both (noise); token 1, 2: learnable
    w = excess_loss_weights(logp, ref, torch.ones_like(logp, dtype=torch.bool), 0.5)
    assert w.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_dft_gradient_equals_its_closed_form():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    target = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.rand(2, 5, generator=g) > 0.3
    logp = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]
    dft_loss(logp, mask).backward()
    probs = logits.detach().softmax(-1)
    p_t = probs.gather(-1, target[..., None])
    closed = p_t * (probs - F.one_hot(target, 7)) * mask[..., None] / mask.sum()  # d/dz of -sg(p) log p
    assert torch.allclose(logits.grad, closed, atol=1e-6)


def test_sstoken_mix_at_gamma_one_and_zero():
    g = torch.Generator().manual_seed(3)
    logp, hist, attn = -torch.rand(3, 8, generator=g), -torch.rand(3, 8, generator=g), torch.rand(3, 8, generator=g)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 6:] = False
    b = TokenBatch(logp, mask, ref_logp=hist, attn=attn)
    by_loss = SSToken(gamma=1.0, rho=0.5).weights(b)
    by_attn = SSToken(gamma=0.0, rho=0.5).weights(b)
    for row in range(3):
        n = int(mask[row].sum())
        k = -(-n // 2)
        sig = (logp - hist)[row, :n]  # loss_history - loss_current
        assert set(by_loss[row].nonzero().flatten().tolist()) == set(sig.topk(k).indices.tolist())
        assert set(by_attn[row].nonzero().flatten().tolist()) == set(attn[row, :n].topk(k).indices.tolist())
    mixed = sstoken_score(logp, hist, attn, mask, 0.25)
    assert torch.allclose(mixed, 0.25 * minmax(logp - hist, mask) + 0.75 * minmax(attn, mask))
    assert float(mixed[mask].min()) >= 0 and float(mixed[mask].max()) <= 1


def test_top_fraction_rejects_a_bad_fraction():
    with pytest.raises(TokenSieveError, match="outside"):
        top_fraction(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), 1.5, True)


def test_critical_weights_and_token_dpo():
    margin = torch.tensor([[-6.0, 0.0, 6.0]])
    w = critical_weights(margin, torch.ones(1, 3, dtype=torch.bool))
    assert w[0, 0] > 0.99 and abs(float(w[0, 1]) - 0.5) < 1e-6 and w[0, 2] < 0.01
    g = torch.Generator().manual_seed(4)
    pc, rc, pr, rr = (-torch.rand(2, 4, generator=g) for _ in range(4))
    ones = torch.ones(2, 4, dtype=torch.bool)
    chosen, rejected = TokenBatch(pc, ones, ref_logp=rc), TokenBatch(pr, ones, ref_logp=rr)
    plain = -F.logsigmoid(0.1 * ((pc - rc).sum(-1) - (pr - rr).sum(-1))).mean()  # DPO
    assert torch.allclose(token_dpo_loss(chosen, rejected, ones.float(), ones.float(), 0.1), plain)
    # cDPO: only the rejected tokens' log-ratios are weighted, by criticality
    pos, neg = torch.zeros(2, 4), torch.tensor([[0.0, 9.0, 0.0, 0.0]] * 2)
    wr = critical_weights(pos - neg, ones)
    expect = -F.logsigmoid(0.1 * ((pc - rc).sum(-1) - ((pr - rr) * wr).sum(-1))).mean()
    assert torch.allclose(Critical(beta=0.1).pair_loss(chosen, rejected, pos, neg), expect)


def test_context_reliance_weights_the_prompt_dependent_token():
    logp = torch.log(torch.tensor([[0.9, 0.9, 0.2]]))
    free = torch.log(torch.tensor([[0.9, 0.1, 0.4]]))  # token 1 needs the prompt; token 2 is likelier without
    w = ContextReliance(cap=5.0).weights(TokenBatch(logp, torch.ones(1, 3, dtype=torch.bool), free_logp=free))
    assert torch.allclose(w, torch.tensor([[1.0, 5.0, 0.5]]))


def test_tshirt_keeps_the_samples_hard_on_informative_tokens():
    mask = torch.ones(2, 4, dtype=torch.bool)
    logp = torch.tensor([[-0.1, -0.1, -2.0, -2.0], [-0.1, -0.1, -0.5, -0.5]])
    free = torch.tensor([[-0.1, -0.1, -3.0, -3.0], [-0.1, -0.1, -4.0, -4.0]])  # last two tokens are informative
    info = informative_tokens(logp, free, mask, 0.5)
    assert info.tolist() == [[False, False, True, True]] * 2
    pert = torch.stack([logp, logp - 0.1])
    scores = tshirt_scores(pert, free, info)
    assert torch.allclose(scores, torch.tensor([2.05 / 3.0, 0.55 / 4.0]))
    w = TShirt(keep=0.5, q=0.5).weights(TokenBatch(logp, mask, free_logp=free, perturbed_logp=pert))
    assert w[0].all() and not w[1].any()


def test_registry_and_missing_inputs():
    assert isinstance(rule("dft"), DFT) and rule("excess_loss", k=0.2).k == 0.2
    with pytest.raises(TokenSieveError, match="unknown training rule"):
        rule("nope")
    with pytest.raises(TokenSieveError, match="needs reference"):
        ExcessLoss().weights(TokenBatch(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)))


# ---- the model-facing parts on a tiny random model ------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_token_logprobs_match_full_logits(arch):
    model = make_model(arch)
    batch = _batch()
    lp, mask = token_logprobs(model, batch["input_ids"], batch["labels"], batch["attention_mask"], chunk=5)
    ref, ref_mask = _oracle_logp(model, batch)
    assert torch.equal(mask, ref_mask)
    assert torch.allclose(lp, ref, atol=1e-5)
    g1 = torch.autograd.grad(lp.sum(), model.get_output_embeddings().weight)[0]
    g2 = torch.autograd.grad(_oracle_logp(model, batch)[0].sum(), model.get_output_embeddings().weight)[0]
    assert torch.allclose(g1, g2, atol=1e-5)


def test_prompt_attention_matches_eager_attention_and_leaves_the_forward_exact():
    model = make_model("llama")
    batch = _batch()
    plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    prompt_len = torch.tensor([4, 3, 5])
    with prompt_attention(model, prompt_len, layer=1) as rec:
        captured = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(captured, plain)  # bit for bit: SDPA runs unchanged
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    att = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    oracle = torch.stack([att.attentions[1][b, :, :, : int(p)].sum(-1).mean(0) for b, p in enumerate(prompt_len)])
    valid = batch["attention_mask"].bool()
    assert torch.allclose(rec.value[valid], oracle[valid], atol=1e-5)


def test_free_logprobs_score_the_response_without_its_prompt():
    model = make_model("llama")
    batch = _batch()
    free = free_logprobs(model, batch["input_ids"], batch["labels"], 0)
    for b, p in enumerate([4, 3, 5]):
        n = int(batch["attention_mask"][b].sum())
        seq = batch["input_ids"][b, p - 1 : n][None]  # the separator token, then the response
        lp = model(input_ids=seq).logits[0, :-1].log_softmax(-1).gather(-1, seq[0, 1:, None])[:, 0]
        assert torch.allclose(free[b, p - 1 : n - 1], lp, atol=1e-5)
        assert not free[b, : p - 1].any() and not free[b, n - 1 :].any()


def test_perturbed_logprobs_at_zero_noise_equal_the_plain_pass():
    model = make_model("llama")
    batch = _batch()
    pert = perturbed_logprobs(model, batch, k=2, sigma=0.0)
    plain = token_logprobs(model, batch["input_ids"], batch["labels"], batch["attention_mask"])[0]
    assert pert.shape == (2, *plain.shape) and torch.allclose(pert[1], plain.detach(), atol=1e-6)
    assert not torch.allclose(perturbed_logprobs(model, batch, k=1, sigma=0.5)[0], plain.detach(), atol=1e-3)


@pytest.mark.parametrize("name", ["sft", "excess_loss", "sstoken", "dft", "context_reliance", "tshirt"])
def test_every_rule_trains_through_token_loss(name):
    model = make_model("llama")
    batch = _batch()
    r = rule(name)
    loss, tb = token_loss(r, model, batch, reference=frozen_copy(model) if "reference" in r.needs else None)
    loss.backward()
    assert torch.isfinite(loss) and model.get_output_embeddings().weight.grad is not None
    assert tb.noise is not None and int(tb.noise.sum()) == 3  # the injected-noise labels travel with the batch
    w = r.weights(tb)
    assert w.shape == tb.mask.shape and not w[~tb.mask].any()


def test_sft_rule_equals_the_models_own_loss():
    model = make_model("llama")
    batch = _batch()
    loss, _ = token_loss(SFT(), model, batch)
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(loss, hf, atol=1e-5)


def test_critical_refuses_the_sft_path():
    with pytest.raises(TokenSieveError, match="pairwise"):
        token_loss(Critical(), make_model("llama"), _batch(), reference=None)


def test_plain_loop_lowers_the_loss_on_a_fixed_batch():
    model = make_model("llama")
    batch = _batch()
    before = float(token_loss(SFT(), model, batch)[0].detach())
    logs = list(train(DFT(), model, iter([batch] * 8), steps=8, lr=3e-3))  # DFT's own value is not monotone in p
    assert float(token_loss(SFT(), model, batch)[0].detach()) < before and logs[0].noise_kept == 1.0


def test_trainer_compute_loss_uses_the_rule(tmp_path):
    from transformers import TrainingArguments

    from tokensieve.train.trainer import TokenSieveTrainer

    model = make_model("llama")
    batch = _batch()
    items = [{k: v[i] for k, v in batch.items()} for i in range(3)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=3, learning_rate=3e-3,
                             report_to=[], use_cpu=True, save_strategy="no", remove_unused_columns=False)
    trainer = TokenSieveTrainer(model=model, args=args, train_dataset=items, rule=ExcessLoss(k=0.5),
                                data_collator=lambda xs: collate(xs, 0))
    loss = trainer.compute_loss(model, dict(batch))
    tb_loss, _ = token_loss(ExcessLoss(k=0.5), model, batch, reference=trainer.reference)
    assert torch.allclose(loss, tb_loss)
    before = model.get_output_embeddings().weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, model.get_output_embeddings().weight)


@requires("trl", "pip install 'tokensieve[trl]'")
# TRL's configs default gradient_checkpointing=True, a name transformers 5.25 deprecates (TRL's warning, not ours)
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_dft_equals_trl_dft_loss(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    vocab = Tokenizer(models.WordLevel({f"t{i}": i for i in range(128)}, unk_token="t1"))
    tok = PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="t0", eos_token="t2")
    model = make_model("llama").train()
    cfg = SFTConfig(output_dir=str(tmp_path), loss_type="dft", report_to=[], use_cpu=True, max_steps=1)
    trl = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list([{"input_ids": [1, 2, 3]}]),
                     processing_class=tok)
    batch = _batch()
    theirs = trl.compute_loss(trl.model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    ours, _ = token_loss(DFT(), model, batch)
    assert torch.allclose(ours, theirs, atol=1e-6)
    g_ours = torch.autograd.grad(ours, model.get_output_embeddings().weight)[0]
    g_theirs = torch.autograd.grad(theirs, model.get_output_embeddings().weight)[0]
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)


def test_inject_noise_marks_what_it_changed():
    from tokensieve.train.data import Example

    exs = [Example("Q: 1 + 2 =\n", "1 + 2 = 3\nAnswer: 3", "3") for _ in range(40)]
    noisy = inject_noise(exs, 0.5, seed=0)
    changed = [n for n in noisy if n.noise]
    assert 8 < len(changed) < 32
    for n in changed:
        ((_lo, hi),) = n.noise
        assert n.solution != exs[0].solution
        assert n.solution[hi:].endswith("Answer: 3")


# ---- controls and offline selection: hand-worked ------------------------------------------------------------

def test_random_drop_keeps_the_fraction_at_random_and_repeats_by_seed():
    mask = torch.tensor([[True] * 10 + [False] * 2, [True] * 6 + [False] * 6])  # 16 response tokens
    b = TokenBatch(torch.zeros(2, 12), mask)
    w = rule("random_drop", keep=0.5, seed=3).weights(b)
    assert int(w.sum()) == 8 and not w[~mask].any()  # ceil(0.5 * 16) over the batch, never a pad
    assert torch.equal(w, rule("random_drop", keep=0.5, seed=3).weights(b))  # same seed, same draw
    draws = {tuple(rule("random_drop", keep=0.5, seed=s).weights(b).flatten().tolist()) for s in range(6)}
    assert len(draws) > 1  # not a fixed pattern
    row = rule("random_drop", keep=0.5, per_row=True).weights(b)
    assert row.sum(-1).tolist() == [5.0, 3.0]


def test_offline_keep_top_ranks_the_whole_dataset_not_each_batch():
    from tokensieve.train.offline import keep_top, random_keep

    # two 'batches' of 3: the second holds the three hardest samples; per-batch top half would keep 2 + 2
    scores = [0.1, 0.3, 0.2, 0.9, 0.8, 0.7]
    assert keep_top(scores, 0.5) == [3, 4, 5]
    assert keep_top([1.0, 1.0, 0.5, 1.0], 0.5) == [0, 1]  # ties: the earlier sample
    picked = random_keep(6, 0.5, seed=0)
    assert len(picked) == 3 and picked == sorted(set(picked)) and picked == random_keep(6, 0.5, seed=0)
    with pytest.raises(TokenSieveError):
        keep_top(scores, 0.0)


def test_tshirt_sample_scores_are_ifd_over_informative_tokens():
    # one sample, 4 response tokens; informative (q = 0.5): the two the prompt helps most (tokens 0, 2)
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    free = torch.tensor([[-3.0, -2.1, -2.5, -3.0]])  # prompt gain: 2.0, 0.1, 2.0, 0.0
    pert = torch.tensor([[[-1.0, -9.0, -1.0, -9.0]], [[-2.0, -9.0, -2.0, -9.0]]])  # K = 2
    b = TokenBatch(logp, torch.ones(1, 4, dtype=torch.bool), free_logp=free, perturbed_logp=pert)
    # L(y|x) per pass: 1.0 and 2.0; L(y) = (3.0 + 2.5) / 2 = 2.75; IFD mean = (1/2.75 + 2/2.75) / 2
    assert TShirt(q=0.5).sample_scores(b).tolist() == pytest.approx([1.5 / 2.75])


def test_step_log_counts_the_tokens_a_rule_trained_on():
    model = make_model("llama")
    batch = _batch()
    n = int((batch["labels"][:, 1:] != -100).sum())
    (full,) = train(SFT(), model, iter([batch]), steps=1, lr=1e-4)
    (half,) = train(rule("random_drop", keep=0.5), model, iter([batch]), steps=1, lr=1e-4)
    assert full.trained == n and half.trained == -(-n // 2)
