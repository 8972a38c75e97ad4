"""`tokensieve train`: fine-tune with one rule on an offline task, resumably, with a progress bar and a plot.

<out>/results.json holds the settings, one log row per step and the evaluation; <out>/checkpoint holds
the trainable weights (safetensors) and the optimizer state, saved every --save-every steps. Rerunning the
same command resumes from the checkpoint; other settings in the same --out are refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from tokensieve.errors import TokenSieveError
from tokensieve.spec import parse_params

SETTINGS = ("method", "task", "steps", "model", "batch", "lr", "max_len", "train_layers", "noise", "seed", "bf16",
            "aux_steps")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="sft, excess_loss, sstoken, dft, critical, tshirt, context_reliance")
    p.add_argument("--task", default="chain_sum", help="chain_sum, basic_arithmetic or gsm_symbolic (reasoning-gym)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--train-layers", type=int, default=8, help="train the top N decoder layers (0 = all)")
    p.add_argument("--noise", type=float, default=0.3, help="fraction of training solutions given injected noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast in training")
    p.add_argument("--aux-steps", type=int, default=20, help="critical: SFT steps for each contrast model")
    p.add_argument("--n-eval", type=int, default=100)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="rule parameter, e.g. k=0.4")


def load_trainable(name: str, train_layers: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokensieve.runtime.models import resolve

    path = resolve(name)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                 attn_implementation="sdpa")
    if train_layers:
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.get_decoder().layers[-train_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _save(out: Path, model: Any, opt: Any, state: dict) -> None:
    from safetensors.torch import save_file

    ck = out / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
              str(ck / "trainable.safetensors"))
    torch.save(opt.state_dict(), ck / "optimizer.pt")
    (out / "results.json").write_text(json.dumps(state, indent=1))


def _plot(out: Path, state: dict) -> None:
    from tokensieve.plotstyle import pyplot, save

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in state["log"]], [r["loss"] for r in state["log"]])
    ax.set(xlabel="step", ylabel=f"{state['settings']['method']} loss", title=f"tokensieve train: {out.name}")
    fig.tight_layout()
    save(fig, out / "loss.png")


def run(args: argparse.Namespace, console: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tokensieve.train import rule as make_rule
    from tokensieve.train.data import (
        check_disjoint,
        collate,
        encode,
        inject_noise,
        load_split,
        load_task,
        wrong_solution,
    )
    from tokensieve.train.evaluate import answer_nll, exact_match
    from tokensieve.train.loop import frozen_copy, make_optimizer, train

    if args.steps < 1 or args.batch < 1:
        raise TokenSieveError(f"--steps {args.steps} / --batch {args.batch} must be positive integers")
    if not 0.0 <= args.noise < 1.0:
        raise TokenSieveError(f"--noise {args.noise} must be a fraction in [0, 1)")
    rule = make_rule(args.method, **parse_params(args.param))
    settings = {k: getattr(args, k) for k in SETTINGS} | {"model": str(args.model), "params": rule.params()}
    load_task(args.task, 1, 0)  # a bad task name fails here, before the model loads
    out = args.out
    state = {"settings": settings, "log": [], "eval": None}
    if (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        if old["settings"] != settings:
            raise TokenSieveError(f"{out} holds a run with other settings: pass a new --out, or the same settings "
                                  "to resume it")
        state = old
        if state["eval"] is not None:
            console.print(f"[tokensieve] {out} is complete; results in {out / 'results.json'}")
            return 0
    model, tok = load_trainable(args.model, args.train_layers)
    reference = frozen_copy(model)
    opt = make_optimizer(model, args.lr)
    done = len(state["log"])
    if done:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "checkpoint" / "trainable.safetensors")), strict=False)
        opt.load_state_dict(torch.load(out / "checkpoint" / "optimizer.pt"))
        console.print(f"[tokensieve] resuming {out} at step {done}")
    torch.manual_seed(args.seed)
    evalset = load_split(args.task, "test", args.n_eval, args.seed)
    held_out = {e.prompt for e in evalset}
    examples = load_split(args.task, "train", args.steps * args.batch, args.seed, exclude=held_out)
    enc = lambda exs: [encode(tok, e, args.max_len) for e in exs]  # noqa: E731
    groups = lambda items: (collate(items[i : i + args.batch], tok.pad_token_id)  # noqa: E731
                            for i in range(done * args.batch, len(items) - args.batch + 1, args.batch))
    if getattr(rule, "pairwise", False):
        from tokensieve.train.pairs import contrast_models, train_pairs

        console.print(f"[tokensieve] critical: training the contrast models ({args.aux_steps} steps each)")
        aux = load_split(args.task, "calibration", args.aux_steps * args.batch, args.seed, exclude=held_out)
        check_disjoint({"test": evalset}, {"contrast-model data": aux})
        wrong = [wrong_solution(e, args.seed + i) for i, e in enumerate(aux)]
        pos, neg = contrast_models(model, (collate(c, tok.pad_token_id) for c in _chunks(enc(aux), args.batch)),
                                   (collate(c, tok.pad_token_id) for c in _chunks(enc(wrong), args.batch)),
                                   args.aux_steps, args.lr, tok.pad_token_id, args.bf16)
        rejected = [wrong_solution(e, 10_000 + args.seed + i) for i, e in enumerate(examples)]
        logs = train_pairs(rule, model, zip(groups(enc(examples)), groups(enc(rejected)), strict=True), args.steps,
                           args.lr, reference, pos, neg, args.bf16, opt, done)
    else:
        train_set = inject_noise(examples, args.noise, args.seed)
        logs = train(rule, model, groups(enc(train_set)), args.steps, lr=args.lr,
                     reference=reference if "reference" in rule.needs else None, pad_id=tok.pad_token_id,
                     bf16=args.bf16, optimizer=opt, start=done)
    columns = (TextColumn(f"[bold]{args.method}[/bold]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=args.steps, completed=done, loss="-")
        for log in logs:
            state["log"].append(log.__dict__)
            bar.update(task, completed=log.step, loss=f"{log.loss:.4f}")
            if log.step % args.save_every == 0 or log.step == args.steps:
                _save(out, model, opt, state)
    check_disjoint({"test": evalset}, {"training": examples})
    console.print(f"[tokensieve] evaluating on {args.n_eval} held-out items (greedy exact match, answer NLL)")
    correct, nll = exact_match(model, tok, evalset), answer_nll(model, tok, evalset)
    state["eval"] = {"exact_match": sum(correct) / len(correct), "answer_nll": sum(nll) / len(nll), "n": len(correct)}
    _save(out, model, opt, state)
    _plot(out, state)
    console.print(f"[tokensieve] exact match {state['eval']['exact_match']:.3f}, answer NLL "
                  f"{state['eval']['answer_nll']:.3f}; {out / 'results.json'}, {out / 'loss.png'}")
    return 0


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items) - n + 1, n)]
