"""Token-weighted fine-tuning against plain SFT and random controls: SmolLM2-135M, chain_sum with injected noise.

Regime (docs/train.md says why): one shared *format checkpoint* (clean SFT on the ``format`` split) is every arm's
starting point; Rho-1's reference is the base model fine-tuned on the clean ``calibration`` split, for more steps
(cost recorded). Every item set comes from its own generator-seed range (``data.split_seed``) and ``check_disjoint``
refuses a run whose test or validation prompts occur in any data a model was fitted on. Each arm trains at every
``--lrs`` value on seed ``--sweep-seed``; the one with the lowest validation answer NLL is tested there and used for
the other seeds. One run = (arm, seed) in runs/<arm>_s<seed>.json, so the script resumes and processes can split the
arms. ``--prepare format`` and ``--prepare reference`` build the two shared checkpoints (once, first; they can run
at the same time); ``--report`` writes results.md / results.json / train_bench.png.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train/train_bench.py --prepare format   # and: --prepare reference
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train/train_bench.py --arms sft,dft --seeds 0,1
    .venv/bin/python benchmarks/train/train_bench.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tokensieve.plotstyle import pyplot, save, styles
from tokensieve.runtime.models import resolve
from tokensieve.stats import clustered_bootstrap, wilson
from tokensieve.train import rule as make_rule
from tokensieve.train.data import Example, check_disjoint, collate, encode, inject_noise, load_split, wrong_solution
from tokensieve.train.evaluate import answer_nll, exact_match, selection
from tokensieve.train.loop import frozen_copy, train
from tokensieve.train.offline import keep_top, random_keep, sample_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import run_provenance, write_table

OUT = Path(__file__).parent / "results"
CACHE = Path.home() / ".cache" / "tokensieve" / "train_bench"
SHARED = 999  # the run seed whose format / calibration / selection splits build the shared checkpoints
GUARD_SEEDS = range(10)  # the shared data excludes these seeds' test and validation prompts
# arm -> (rule, the control it is compared with); tshirt and random_sample select samples offline
ARMS = {"sft": "sft", "excess_loss": "excess_loss", "sstoken": "sstoken", "random_drop": "random_drop",
        "dft": "dft", "context_reliance": "context_reliance", "tshirt": "tshirt", "random_sample": "sft",
        "critical": "critical"}
CONTROL = {"excess_loss": "random_drop", "sstoken": "random_drop", "tshirt": "random_sample"}
SELECTION_ARMS = ["excess_loss", "sstoken", "random_drop", "dft", "context_reliance", "tshirt"]


def load(train_layers: int, weights: Path | None = None):
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
    if weights is not None:
        model.load_state_dict(torch.load(weights), strict=False)
    return model.eval(), tok


def trainable(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def batches(tok, examples, batch: int, max_len: int):
    enc = [encode(tok, e, max_len) for e in examples]
    for lo in range(0, len(enc) - batch + 1, batch):
        yield collate(enc[lo : lo + batch], tok.pad_token_id)


def eval_sets(args, seed: int) -> dict[str, list]:
    test = load_split(args.task, "test", args.n_test, seed)
    return {"test": test, "validation": load_split(args.task, "validation", args.n_val, seed,
                                                   exclude={e.prompt for e in test})}


def shared_data(args) -> dict[str, list]:
    """The format-checkpoint, Rho-1-reference and selection-probe items: clean, and free of every guarded
    seed's test and validation prompts."""
    held = {e.prompt for s in GUARD_SEEDS for items in eval_sets(args, s).values() for e in items}
    fmt = load_split(args.task, "format", args.format_steps * args.batch, SHARED, exclude=held)
    ref = load_split(args.task, "calibration", args.ref_steps * args.batch, SHARED, exclude=held)
    probe = load_split(args.task, "selection", 2 * args.batch, SHARED, exclude=held)
    return {"format checkpoint": fmt, "Rho-1 reference": ref, "selection probe": probe}


def prepare(args, part: str) -> dict:
    """``format``: the format checkpoint (SFT on clean format items from the base model); ``reference``: Rho-1's
    reference (SFT on clean calibration items from the base model, ``--ref-steps``). Each is saved under --cache
    with its cost and the prompts it was fitted on; the two can run at the same time."""
    data = shared_data(args)
    args.cache.mkdir(parents=True, exist_ok=True)
    name, items, steps = {"format": ("format checkpoint", data["format checkpoint"], args.format_steps),
                          "reference": ("Rho-1 reference", data["Rho-1 reference"], args.ref_steps)}[part]
    prompts = {name: [e.prompt for e in items]}
    if part == "format":
        prompts["selection probe"] = [e.prompt for e in data["selection probe"]]
    model, tok = load(args.train_layers)
    t0 = time.perf_counter()
    logs = list(train(make_rule("sft"), model, batches(tok, items, args.batch, args.max_len), steps,
                      lr=args.prep_lr, pad_id=tok.pad_token_id, bf16=args.bf16))
    torch.save(trainable(model), args.cache / f"{part}.pt")
    info = {"steps": steps, "examples": len(items), "lr": args.prep_lr, "train_s": time.perf_counter() - t0,
            "trained_tokens": sum(lg.trained for lg in logs), "final_loss": logs[-1].loss, "from": "base model"}
    print(part, info, flush=True)
    (args.cache / f"{part}.json").write_text(json.dumps({**info, "prompts": prompts}))
    return info


def selection_at_start(args) -> None:
    """Forward passes only: every rule's selection on the held-out noisy probe at the format checkpoint, each
    with the reference it would train with (Rho-1: the clean reference, and for contrast the starting model
    itself, the old default), plus how the checkpoint writes answers on ``--start-items`` validation items."""
    prep = json.loads((args.cache / "format.json").read_text())
    probe_prompts = set(prep["prompts"]["selection probe"])
    probe = inject_noise([e for e in shared_data(args)["selection probe"] if e.prompt in probe_prompts], 0.5, SHARED)
    check_disjoint(eval_sets(args, 0), {"selection probe": probe, "format checkpoint": [
        Example(q, "", "") for q in prep["prompts"]["format checkpoint"]]})
    start, tok = load(args.train_layers, args.cache / "format.pt")
    has_ref = (args.cache / "reference.pt").exists()
    reference = load(args.train_layers, args.cache / "reference.pt")[0] if has_ref else None
    sel = list(batches(tok, probe, args.batch, args.max_len))
    cases = [("excess_loss, reference = the clean-data reference", "excess_loss", {}, reference),
             ("excess_loss, reference = the starting model (the old default)", "excess_loss", {}, start),
             ("sstoken, history = the starting model", "sstoken", {}, start),
             ("tshirt (online weights, batches of 8)", "tshirt", {}, None),
             (f"random_drop, keep {args.token_keep}", "random_drop", {"keep": args.token_keep}, None),
             ("context_reliance", "context_reliance", {}, None), ("dft", "dft", {}, None)]
    path = args.out / "selection_start.json"
    done = json.loads(path.read_text()) if path.exists() else {}  # a rerun adds the cases still missing
    rows = done.get("selection", {})
    for label, name, params, ref in cases:
        if label in rows or (make_rule(name).needs & {"reference"} and ref is None):
            continue
        t0 = time.perf_counter()
        rows[label] = selection(make_rule(name, **params), start, sel, ref, tok.pad_token_id)
        print(label, rows[label], f"{time.perf_counter() - t0:.0f}s", flush=True)
    sv = done.get("start_validation")
    if sv is None:
        val = eval_sets(args, 0)["validation"][: args.start_items]
        texts: list[str] = []
        em = exact_match(start, tok, val, max_new=args.max_new, texts=texts)
        sv = {"n": len(val), "exact_match": sum(em) / len(em), "answer_line": sum("Answer:" in t for t in texts)
              / len(texts), "texts": texts}
    cmd = "python " + " ".join(sys.argv)
    record = {"commands": sorted({*done.get("commands", []), cmd}), "provenance": run_provenance(),
              "prepare": {p: {k: v for k, v in json.loads(f.read_text()).items() if k != "prompts"}
                          for p in ("format", "reference") if (f := args.cache / f"{p}.json").exists()},
              "probe_items": len(probe), "selection": rows,
              "start_validation": sv}
    path.write_text(json.dumps(record, indent=1))
    lines = ["| rule (at the format checkpoint) | noise kept | clean kept | answer-line kept | drop precision "
             "(noise share) | AUROC (noise weighted lower) |", "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        dn, dc = (1 - r["noise_kept"]) * r["noise_tokens"], (1 - r["clean_kept"]) * r["clean_tokens"]
        share = r["noise_tokens"] / (r["noise_tokens"] + r["clean_tokens"])
        prec = f"{dn / (dn + dc):.2f} ({share:.2f})" if dn + dc > 0 else f"- ({share:.2f})"
        lines.append(f"| {label} | {r['noise_kept']:.2f} | {r['clean_kept']:.2f} | {r['answer_kept']:.2f} | {prec} | "
                     f"{r['auroc']:.3f} |")
    lines += ["", f"Probe: {len(probe)} items, {rows and next(iter(rows.values()))['noise_tokens']} noise and "
              f"{rows and next(iter(rows.values()))['clean_tokens']} clean response tokens. Format checkpoint on "
              f"{sv['n']} validation items: exact match {sv['exact_match']:.2f}, an 'Answer:' line in "
              f"{sv['answer_line']:.2f}.", "", "Commands: " + "; ".join(f"`{c}`" for c in record["commands"])]
    write_table(args.out / "selection_start.md", lines)
    print("\n".join(lines))


def arm_training(args, arm: str, model, tok, seed: int, lr: float, start, reference, train_set, clean, aux):
    """Train ``model`` in place for one arm; returns (step logs, extra record fields)."""
    extra: dict = {}
    if arm == "critical":  # cDPO: contrast models on calibration items, DPO on (clean, wrong) training pairs
        from tokensieve.train.pairs import contrast_models, train_pairs

        wrong = [wrong_solution(e, seed + i) for i, e in enumerate(aux)]
        pos, neg = contrast_models(model, batches(tok, aux, args.batch, args.max_len),
                                   batches(tok, wrong, args.batch, args.max_len), args.aux_steps, lr,
                                   tok.pad_token_id, args.bf16)  # fmt: skip
        rejected = [wrong_solution(e, 10_000 + seed + i) for i, e in enumerate(clean)]
        pairs = zip(batches(tok, clean, args.batch, args.max_len), batches(tok, rejected, args.batch, args.max_len),
                    strict=True)  # fmt: skip
        extra["aux_steps"] = args.aux_steps
        return list(train_pairs(make_rule("critical"), model, pairs, args.steps, lr, start, pos, neg, args.bf16)), extra
    if arm in ("tshirt", "random_sample"):  # offline: pick half the samples once, then plain SFT on them
        if arm == "tshirt":
            t0 = time.perf_counter()
            scores = sample_scores(make_rule("tshirt"), start, batches(tok, train_set, args.batch, args.max_len),
                                   tok.pad_token_id)
            kept = keep_top(scores, args.sample_keep)
            extra["scoring_s"] = time.perf_counter() - t0
        else:
            kept = random_keep(len(train_set), args.sample_keep, seed)
        chosen = [train_set[i] for i in kept]
        extra["samples_kept"] = len(chosen)
        extra["noisy_samples_kept"] = sum(bool(e.noise) for e in chosen)
        steps = len(chosen) // args.batch
        return list(train(make_rule("sft"), model, batches(tok, chosen, args.batch, args.max_len), steps, lr=lr,
                          pad_id=tok.pad_token_id, bf16=args.bf16)), extra
    rule = make_rule(ARMS[arm], **({"keep": args.token_keep, "seed": seed} if arm == "random_drop" else {}))
    ref = reference if arm == "excess_loss" else start  # sstoken: the history model is the starting checkpoint
    return list(train(rule, model, batches(tok, train_set, args.batch, args.max_len), args.steps, lr=lr,
                      reference=ref if "reference" in rule.needs else None, pad_id=tok.pad_token_id,
                      bf16=args.bf16)), extra


def selection_rows(args, arm: str, model, tok, start, reference, probe) -> dict:
    """The arm's own rule, with its own reference, on the held-out noisy probe: at the start and after training."""
    name = "tshirt" if arm == "tshirt" else ARMS[arm]
    params = {"keep": args.token_keep} if name == "random_drop" else {}
    ref = reference if arm == "excess_loss" else start
    sel_batches = list(batches(tok, probe, args.batch, args.max_len))
    out = {}
    for when, m in (("start", start), ("after", model)):
        out[when] = selection(make_rule(name, **params), m, sel_batches, ref, tok.pad_token_id)
    return out


def run(args, arm: str, seed: int) -> dict:
    sets = eval_sets(args, seed)
    held = {e.prompt for items in sets.values() for e in items}
    clean = load_split(args.task, "train", args.steps * args.batch, seed, exclude=held)
    train_set = inject_noise(clean, args.noise, seed)
    aux = load_split(args.task, "calibration", args.aux_steps * args.batch, seed, exclude=held)
    parts = ["format", "reference"] if arm == "excess_loss" else ["format"]
    prep = {p: json.loads((args.cache / f"{p}.json").read_text()) for p in parts}
    shared = {k: [Example(q, "", "") for q in v] for p in parts for k, v in prep[p]["prompts"].items()}
    check_disjoint(sets, {"training": clean, "contrast-model data": aux, **shared})  # the data actually used
    probe = inject_noise([e for e in shared_data(args)["selection probe"]
                          if e.prompt in set(prep["format"]["prompts"]["selection probe"])], 0.5, SHARED)
    sweep_file = args.out / "runs" / f"{arm}_s{args.sweep_seed}.json"
    if seed == args.sweep_seed:
        lrs = args.lrs
    elif sweep_file.exists():
        lrs = [json.loads(sweep_file.read_text())["lr"]]
    else:
        raise SystemExit(f"run {arm} on --sweep-seed {args.sweep_seed} first: it chooses the learning rate")
    start, tok = load(args.train_layers, args.cache / "format.pt")
    start = frozen_copy(start)
    reference = frozen_copy(load(args.train_layers, args.cache / "reference.pt")[0]) if arm == "excess_loss" else None
    record: dict = {"arm": arm, "seed": seed, "task": args.task, "steps": args.steps, "batch": args.batch,
                    "max_len": args.max_len, "train_layers": args.train_layers, "noise": args.noise,
                    "precision": "bf16 autocast (training), fp32 (evaluation)" if args.bf16 else "fp32",
                    "n_test": args.n_test, "n_val": args.n_val, "threads": torch.get_num_threads(),
                    "prepare": {p: {k: v for k, v in d.items() if k != "prompts"} for p, d in prep.items()},
                    "sweep": []}
    best = None
    for lr in lrs:
        torch.manual_seed(seed)
        model, _ = load(args.train_layers, args.cache / "format.pt")
        t0 = time.perf_counter()
        logs, extra = arm_training(args, arm, model, tok, seed, lr, start, reference, train_set, clean, aux)
        row = {"lr": lr, "train_s": time.perf_counter() - t0, "log": [lg.__dict__ for lg in logs],
               "trained_tokens": sum(lg.trained for lg in logs), **extra}
        if seed == args.sweep_seed:  # answer NLL: continuous and a teacher-forced pass; exact match needs generation
            row["val_nll"] = answer_nll(model, tok, sets["validation"])
            row["val_answer_nll"] = sum(row["val_nll"]) / args.n_val
            print(f"{arm} s{seed} lr {lr:g} val nll {row['val_answer_nll']:.3f} {row['train_s']:.0f}s", flush=True)
        key = -row.get("val_answer_nll", 0.0)
        if best is None or key > best[0]:
            best = (key, row, trainable(model) if len(lrs) > 1 else None, model)
        record["sweep"].append({k: v for k, v in row.items() if k != "log"})
    _, row, weights, model = best
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    record.update(lr=row["lr"], log=row["log"], train_s=row["train_s"], trained_tokens=row["trained_tokens"],
                  **{k: v for k, v in row.items() if k in ("aux_steps", "samples_kept", "noisy_samples_kept",
                                                           "scoring_s")})
    if seed == args.sweep_seed and arm in SELECTION_ARMS:
        record["selection"] = selection_rows(args, arm, model, tok, start, reference, probe)
    t1 = time.perf_counter()
    texts: list[str] = []
    record["prompts"] = [e.prompt for e in sets["test"]]
    record["correct"] = exact_match(model, tok, sets["test"], max_new=args.max_new, texts=texts)
    record["generations"] = texts[:20]  # to tell a wrong answer from a missing 'Answer:' line
    record["answer_nll"] = answer_nll(model, tok, sets["test"])
    record["eval_s"] = time.perf_counter() - t1
    print(f"{arm} s{seed} lr {record['lr']:g} test exact {sum(record['correct']) / args.n_test:.3f} "
          f"nll {sum(record['answer_nll']) / args.n_test:.3f}", flush=True)
    return record


def merge(out: Path, parts: list[Path]) -> None:
    """Runs of one arm at different learning rates made by separate processes (``--lrs`` one value each, its own
    ``--out``): keep, per (arm, sweep seed), the run with the lowest validation answer NLL, with every part's sweep
    row, so the choice is the same as one process sweeping them in turn."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    names = sorted({f.name for d in parts for f in (d / "runs").glob("*.json")})
    for name in names:
        found = [json.loads((d / "runs" / name).read_text()) for d in parts if (d / "runs" / name).exists()]
        best = min(found, key=lambda r: r["sweep"][0].get("val_answer_nll", float("inf")))
        best["sweep"] = [row for r in found for row in r["sweep"]]
        best["merged_from"] = [str(d) for d in parts if (d / "runs" / name).exists()]
        (out / "runs" / name).write_text(json.dumps(best))
        print(name, "lr", best["lr"], [(row["lr"], row.get("val_answer_nll")) for row in best["sweep"]])


def vs(runs: dict, arm: str, other: str, key: str) -> tuple | None:
    """Paired difference arm - other over every (seed, test item) both ran, clustered by prompt text (two
    seeds can draw the same expression)."""
    seeds = sorted(s for (a, s) in runs if a == arm and (other, s) in runs)
    if not seeds:
        return None
    diffs, clusters = [], []
    for s in seeds:
        a, b = runs[(arm, s)], runs[(other, s)]
        diffs += [x - y for x, y in zip(a[key], b[key], strict=True)]
        clusters += a["prompts"]
    iv = clustered_bootstrap(diffs, clusters)
    return iv.estimate, iv.lo, iv.hi


def fmt_ci(ci: tuple | None) -> str:
    return f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]" if ci else "-"


def report(out: Path) -> None:
    plt = pyplot()
    loaded = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    runs = {(r["arm"], r["seed"]): r for r in loaded}
    arms = [a for a in ARMS if any(k[0] == a for k in runs)]
    rows, summary = [], {}
    for arm in arms:
        rs = [runs[k] for k in sorted(runs) if k[0] == arm]
        correct = [c for r in rs for c in r["correct"]]
        nll = [x for r in rs for x in r["answer_nll"]]
        w = wilson(sum(correct), len(correct))
        entry = {"seeds": [r["seed"] for r in rs], "lr": rs[0]["lr"], "n": len(correct),
                 "exact_match": [w.estimate, w.lo, w.hi], "answer_nll": sum(nll) / len(nll),
                 "per_seed_exact_match": [sum(r["correct"]) / len(r["correct"]) for r in rs],
                 "trained_tokens": [r["trained_tokens"] for r in rs], "train_s": [r["train_s"] for r in rs],
                 "sweep": [[{k: v for k, v in row.items() if k in ("lr", "val_answer_nll")}
                            for row in r["sweep"]] for r in rs if len(r["sweep"]) > 1],
                 "em_vs_sft": vs(runs, arm, "sft", "correct") if arm != "sft" else None,
                 "nll_vs_sft": vs(runs, arm, "sft", "answer_nll") if arm != "sft" else None}
        ctrl = CONTROL.get(arm)
        entry["em_vs_control"] = vs(runs, arm, ctrl, "correct") if ctrl else None
        for key in ("samples_kept", "noisy_samples_kept", "aux_steps", "scoring_s"):
            if key in rs[0]:
                entry[key] = [r.get(key) for r in rs]
        summary[arm] = entry
        tokens = sum(entry["trained_tokens"]) / len(rs)
        sweep = "; ".join(f"{row['lr']:g}: {row['val_answer_nll']:.3f}" for row in (entry["sweep"] or [[]])[0])
        rows.append(f"| {arm} | {entry['lr']:g} ({sweep}) | {len(rs)} x {len(rs[0]['correct'])} | "
                    f"{w.estimate:.3f} [{w.lo:.3f}, {w.hi:.3f}] | {entry['answer_nll']:.3f} | "
                    f"{fmt_ci(entry['em_vs_sft'])} | {fmt_ci(entry['nll_vs_sft'])} | "
                    f"{(ctrl + ' ' + fmt_ci(entry['em_vs_control'])) if ctrl else '-'} | {tokens:.0f} |")
    lines = ["| arm | lr (validation answer NLL per lr) | seeds x test items | exact match (Wilson 95%) | answer NLL | "
             "EM - SFT (95%, clustered) | NLL - SFT | EM - its random control | trained tokens / seed |",
             "|---|---|---|---|---|---|---|---|---|", *rows]
    sels = {r["arm"]: r["selection"] for r in loaded if "selection" in r}
    if sels:
        lines += ["", "Selection on the held-out noisy probe (16 items, noise in half), each arm's own rule and "
                  "reference, with the starting checkpoint and with the arm's trained model:", "",
                  "| rule | when | noise kept | clean kept | answer-line kept | drop precision (noise share) | "
                  "AUROC (noise weighted lower) |", "|---|---|---|---|---|---|---|"]
        for arm, sel in sels.items():
            for when, s in sel.items():
                dn = (1 - s["noise_kept"]) * s["noise_tokens"]
                dc = (1 - s["clean_kept"]) * s["clean_tokens"]
                base = s["noise_tokens"] / (s["noise_tokens"] + s["clean_tokens"])
                prec = f"{dn / (dn + dc):.2f} ({base:.2f})" if dn + dc > 0 else f"- ({base:.2f})"
                lines.append(f"| {arm} | {when} | {s['noise_kept']:.2f} | {s['clean_kept']:.2f} | "
                             f"{s['answer_kept']:.2f} | {prec} | {s['auroc']:.3f} |")
    commands = sorted({r["command"] for r in loaded})
    lines += ["", "Runs: " + "; ".join(f"`{c}`" for c in commands)]
    write_table(out / "results.md", lines)
    (out / "results.json").write_text(json.dumps({"summary": summary, "selection": sels,
                                                  "prepare": {p: d for r in loaded for p, d in r["prepare"].items()},
                                                  "provenance": run_provenance()}, indent=1))
    print("\n".join(lines))
    st = styles(arms)
    fig, ax = plt.subplots(1, 2, figsize=(11, 0.45 * len(arms) + 1.6), sharey=True)
    ys = range(len(arms))
    for i, arm in enumerate(arms):
        e = summary[arm]
        ax[0].barh(i, e["exact_match"][0], color=st[arm]["color"], alpha=0.75)
        ax[0].errorbar(e["exact_match"][0], i, xerr=[[e["exact_match"][0] - e["exact_match"][1]],
                                                     [e["exact_match"][2] - e["exact_match"][0]]], color="k",
                       capsize=3)
        ax[0].scatter(e["per_seed_exact_match"], [i] * len(e["per_seed_exact_match"]), color="k", s=12, zorder=3)
        ax[1].barh(i, e["answer_nll"], color=st[arm]["color"], alpha=0.75)
    ax[0].set_yticks(list(ys), arms)
    ax[0].invert_yaxis()
    ax[0].set(xlabel="greedy exact match, held-out test (bar: pooled, Wilson 95%; dots: seeds)",
              title="exact match per arm")
    ax[1].set(xlabel="answer-token NLL after the gold steps (lower is better)", title="answer NLL per arm")
    fig.tight_layout()
    save(fig, out / "train_bench.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--task", default="chain_sum")
    p.add_argument("--steps", type=int, default=16, help="training steps per arm (offline sample arms: half)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[5e-5, 2e-4])
    p.add_argument("--sweep-seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=96)
    p.add_argument("--train-layers", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--token-keep", type=float, default=0.6, help="random_drop's keep (excess_loss k, sstoken rho)")
    p.add_argument("--sample-keep", type=float, default=0.5, help="tshirt / random_sample: share of samples kept")
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--max-new", type=int, default=32, help="greedy tokens generated per eval item")
    p.add_argument("--aux-steps", type=int, default=8, help="critical: SFT steps for each contrast model")
    p.add_argument("--format-steps", type=int, default=40, help="--prepare: SFT steps of the format checkpoint")
    p.add_argument("--ref-steps", type=int, default=40, help="--prepare: further clean SFT steps of the reference")
    p.add_argument("--prep-lr", type=float, default=1e-4)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--prepare", choices=["format", "reference"], help="build one shared checkpoint")
    p.add_argument("--report", action="store_true")
    p.add_argument("--merge", help="comma-separated --out folders of single-lr runs to merge into --out")
    p.add_argument("--selection-at-start", action="store_true", help="forward passes only, at the format checkpoint")
    p.add_argument("--start-items", type=int, default=8, help="--selection-at-start: validation items generated")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge(args.out, [Path(d) for d in args.merge.split(",")])
    if args.report:
        return report(args.out)
    if args.selection_at_start:
        return selection_at_start(args)
    if args.prepare:
        prepare(args, args.prepare)
        return None
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            path = args.out / "runs" / f"{arm}_s{seed}.json"
            if path.exists():
                print(f"skip {path.name} (done)", flush=True)
                continue
            rec = run(args, arm, seed)
            rec["command"] = "python " + " ".join(sys.argv)
            rec["provenance"] = run_provenance()
            path.write_text(json.dumps(rec))
    return None


if __name__ == "__main__":
    main()
