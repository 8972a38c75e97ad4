"""Token-weighted fine-tuning at equal compute: SmolLM2-135M on reasoning-gym tasks with injected noise.

Every arm sees the same batches (per seed), steps, learning rate and tokens; only the loss differs.
One run = (arm, seed), written to runs/<arm>_s<seed>.json when it finishes, so the script resumes
and several processes can split the arms. ``--report`` aggregates: table (results.md/json), paired
bootstrap intervals against SFT, loss-curve and exact-match plots.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/train/train_bench.py --arms sft,dft --seeds 0,1,2
    .venv/bin/python benchmarks/train/train_bench.py --report
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from tokensieve.plotstyle import pyplot, save, style
from tokensieve.runtime.models import resolve
from tokensieve.stats import crossed_bootstrap
from tokensieve.train import rule as make_rule
from tokensieve.train.data import EVAL_SEED_OFFSET, collate, encode, inject_noise, load_task, wrong_solution
from tokensieve.train.evaluate import answer_nll, exact_match, selection
from tokensieve.train.loop import frozen_copy, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import run_provenance, write_table

OUT = Path(__file__).parent / "results"
SELECTION_RULES = ["excess_loss", "sstoken", "dft", "context_reliance", "tshirt"]


def load(train_layers: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve("smollm2")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                 attn_implementation="sdpa")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.get_decoder().layers[-train_layers:]:  # the same trainable set in every arm
        for p in layer.parameters():
            p.requires_grad_(True)
    return model.eval(), tok


def batches(tok, examples, batch: int, max_len: int):
    enc = [encode(tok, e, max_len) for e in examples]
    for lo in range(0, len(enc) - batch + 1, batch):
        yield collate(enc[lo : lo + batch], tok.pad_token_id)


def pair_steps(args, rule, model, tok, examples, seed: int, reference):
    """The cDPO arm: two contrast models (``--aux-steps`` SFT steps each on correct / wrong trajectories of
    other prompts), then token-weighted DPO on (clean, wrong) pairs of the same prompts as the other arms.
    It sees each prompt twice (chosen and rejected) and pays 2 x aux-steps extra steps: stated in the report."""
    from tokensieve.train.pairs import contrast_models, train_pairs

    aux = load_task(args.task, args.aux_steps * args.batch, seed + 7)
    wrong = [wrong_solution(e, seed + i) for i, e in enumerate(aux)]
    pos, neg = contrast_models(model, batches(tok, aux, args.batch, args.max_len),
                               batches(tok, wrong, args.batch, args.max_len), args.aux_steps, args.lr,
                               tok.pad_token_id, args.bf16)  # fmt: skip
    rejected = [wrong_solution(e, 10_000 + seed + i) for i, e in enumerate(examples)]
    pairs = zip(batches(tok, examples, args.batch, args.max_len), batches(tok, rejected, args.batch, args.max_len),
                strict=True)  # fmt: skip
    return train_pairs(rule, model, pairs, args.steps, args.lr, reference, pos, neg, args.bf16)


def run(args, arm: str, seed: int, base_eval: bool = False) -> dict:
    torch.manual_seed(seed)
    model, tok = load(args.train_layers)
    evalset = load_task(args.task, args.n_eval, EVAL_SEED_OFFSET + seed)
    record = {"arm": arm, "seed": seed, "task": args.task, "steps": 0 if base_eval else args.steps,
              "batch": args.batch, "lr": args.lr, "max_len": args.max_len, "train_layers": args.train_layers,
              "noise": args.noise, "bf16": args.bf16, "n_eval": args.n_eval, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": platform.python_version()}
    t0 = time.perf_counter()
    if not base_eval:
        examples = load_task(args.task, args.steps * args.batch, seed)
        train_set = inject_noise(examples, args.noise, seed)
        base = frozen_copy(model)
        rule = make_rule(arm)
        logs = []
        if getattr(rule, "pairwise", False):  # cDPO: (clean, wrong-digit) pairs of the same prompts
            steps = pair_steps(args, rule, model, tok, examples, seed, base)
        else:
            steps = train(rule, model, batches(tok, train_set, args.batch, args.max_len), args.steps, lr=args.lr,
                          reference=base if "reference" in rule.needs else None, pad_id=tok.pad_token_id,
                          bf16=args.bf16)
        for log in steps:
            logs.append(log.__dict__)
            print(f"{arm} s{seed} step {log.step} loss {log.loss:.4f} kept {log.kept:.2f} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        record["train_s"] = time.perf_counter() - t0
        record["log"] = logs
        if getattr(rule, "pairwise", False):
            record["aux_steps"] = args.aux_steps  # each contrast model's SFT steps, on top of --steps
        record["tokens"] = sum(int((b["labels"] != -100).sum()) for b in batches(tok, train_set, args.batch,
                                                                                  args.max_len))
        if seed == args.selection_seed:  # which tokens each rule would drop, on the trained model
            sel_set = inject_noise(load_task(args.task, 3 * args.batch, 99_999), 0.5, 99_999)
            sel_batches = list(batches(tok, sel_set, args.batch, args.max_len))
            record["selection"] = {r: selection(make_rule(r), model, sel_batches, base, tok.pad_token_id)
                                   for r in SELECTION_RULES}
    t1 = time.perf_counter()
    texts: list[str] = []
    record["correct"] = exact_match(model, tok, evalset, max_new=args.max_new, texts=texts)
    record["generations"] = texts[:20]  # to tell a wrong answer from a missing 'Answer:' line
    record["answer_nll"] = answer_nll(model, tok, evalset)
    record["eval_s"] = time.perf_counter() - t1
    print(f"{arm} s{seed} exact {sum(record['correct']) / len(evalset):.3f} "
          f"nll {sum(record['answer_nll']) / len(evalset):.3f}", flush=True)
    return record


def bootstrap(diffs: list[list[float]]) -> tuple[float, float, float]:
    """Mean paired difference over seeds x items and a 95% interval, resampling items (paired across seeds)
    and seeds (``tokensieve.stats.crossed_bootstrap``)."""
    iv = crossed_bootstrap(diffs)
    return iv.estimate, iv.lo, iv.hi


def report(out: Path) -> None:
    plt = pyplot()

    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    arms = sorted({r["arm"] for r in runs}, key=lambda a: (a != "base", a != "sft", a))
    by = {(r["arm"], r["seed"]): r for r in runs}
    rows, summary = [], {}
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        em = [sum(r["correct"]) / len(r["correct"]) for r in rs]
        nll = [sum(r["answer_nll"]) / len(r["answer_nll"]) for r in rs]
        entry = {"seeds": [r["seed"] for r in rs], "exact_match": em, "answer_nll": nll,
                 "train_s": [r.get("train_s") for r in rs], "tokens": [r.get("tokens") for r in rs]}
        if arm not in ("sft", "base"):
            paired = [s for s in entry["seeds"] if ("sft", s) in by]
            if paired:
                em_d = [[a - b for a, b in zip(by[(arm, s)]["correct"], by[("sft", s)]["correct"], strict=True)]
                        for s in paired]
                nll_d = [[a - b for a, b in zip(by[(arm, s)]["answer_nll"], by[("sft", s)]["answer_nll"],
                                                strict=True)] for s in paired]
                entry["em_vs_sft"] = bootstrap(em_d)
                entry["nll_vs_sft"] = bootstrap(nll_d)
                entry["paired_seeds"] = paired
        summary[arm] = entry
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        em_ci = entry.get("em_vs_sft")
        nll_ci = entry.get("nll_vs_sft")
        rows.append(f"| {arm} | {len(rs)} | {mean(em):.3f} | {mean(nll):.3f} | "
                    + (f"{em_ci[0]:+.3f} [{em_ci[1]:+.3f}, {em_ci[2]:+.3f}]" if em_ci else "-") + " | "
                    + (f"{nll_ci[0]:+.3f} [{nll_ci[1]:+.3f}, {nll_ci[2]:+.3f}]" if nll_ci else "-") + " |")
    sels = [(f"{r['arm']} seed {r['seed']}", r["selection"]) for r in runs if "selection" in r]
    lines = ["| arm | seeds | exact match | answer NLL | EM - SFT (95% CI) | NLL - SFT (95% CI) |",
             "|---|---|---|---|---|---|", *rows]
    for src, sel in sels:
        lines += ["", f"Selection on injected noise (model after the `{src}` run, reference = base model):", "",
                  "| rule | noise kept | clean kept | drop precision (random) | mean weight noise / clean | "
                  "AUROC (noise weighted lower) |", "|---|---|---|---|---|---|"]
        for name, s in sel.items():
            dn = (1 - s["noise_kept"]) * s["noise_tokens"]  # dropped noise tokens
            dc = (1 - s["clean_kept"]) * s["clean_tokens"]
            base = s["noise_tokens"] / (s["noise_tokens"] + s["clean_tokens"])
            prec = f"{dn / (dn + dc):.2f} ({base:.2f})" if dn + dc > 0 else f"- ({base:.2f})"
            lines.append(f"| {name} | {s['noise_kept']:.2f} | {s['clean_kept']:.2f} | {prec} | "
                         f"{s['noise_weight']:.3f} / {s['clean_weight']:.3f} | {s['auroc']:.3f} |")
    write_table((out / "results.md"), lines)
    record = {"summary": summary, "selection": dict(sels), "provenance": run_provenance()}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        logs = [r["log"] for r in runs if r["arm"] == arm and "log" in r]
        if logs:
            n = min(len(lg) for lg in logs)
            curve = [sum(lg[i]["loss"] for lg in logs) / len(logs) for i in range(n)]
            label = f"{arm} ({len(logs)} seeds)"
            ax[0].plot(range(1, n + 1), curve, label=label, markevery=max(1, n // 8), **style(arm))
    ax[0].set(xlabel="step", ylabel="training loss (own objective)", title="loss curves (mean over seeds)")
    ax[0].legend()
    em = [summary[a]["exact_match"] for a in arms]
    ax[1].bar(arms, [sum(e) / len(e) for e in em], color=[style(a)["color"] for a in arms])
    for i, e in enumerate(em):
        ax[1].scatter([i] * len(e), e, color="k", s=12, zorder=3)
    ax[1].set(ylabel="greedy exact match (held out)", title="exact match per arm (dots: seeds)")
    fig.tight_layout()
    save(fig, out / "train_bench.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="sft,dft")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--task", default="chain_sum")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-len", type=int, default=96)
    p.add_argument("--train-layers", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--n-eval", type=int, default=200)
    p.add_argument("--max-new", type=int, default=40, help="greedy tokens generated per eval item")
    p.add_argument("--selection-seed", type=int, default=0)
    p.add_argument("--aux-steps", type=int, default=20, help="critical: SFT steps for each contrast model")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--base", action="store_true", help="also evaluate the untrained model")
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    if args.report:
        return report(args.out)
    todo = [(a, int(s), False) for s in args.seeds.split(",") for a in args.arms.split(",")]
    todo += [("base", 0, True)] if args.base else []  # last: the paired runs matter more
    for arm, seed, base_eval in todo:
        path = args.out / "runs" / f"{arm}_s{seed}.json"
        if path.exists():
            print(f"skip {path.name} (done)", flush=True)
            continue
        rec = run(args, arm, seed, base_eval)
        rec["command"] = "python " + " ".join(sys.argv)
        rec["provenance"] = run_provenance()
        path.write_text(json.dumps(rec))


if __name__ == "__main__":
    main()
