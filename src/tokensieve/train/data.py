"""Offline reasoning tasks from ``reasoning-gym`` with worked solutions, and injected noise with ground truth.

Items come from named splits (``split_seed``): every (split, run seed) pair owns its own range of generator
seeds, so no two runs or splits share a generated item; a small task can still generate the same prompt from
two seeds, so ``load_split`` drops prompts it is told to exclude and ``check_disjoint`` refuses any evaluation
prompt that also occurs in training or calibration data. A fraction of training solutions gets known noise: a
corrupted digit in an intermediate result, or a boilerplate sentence; the noisy characters are recorded,
so a rule's token selection can be scored against them (selection precision) from forward passes alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from tokensieve.errors import TokenSieveError
from tokensieve.train.tokens import IGNORE

TASKS = {
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
    "basic_arithmetic": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2, allow_parentheses=False),
    "gsm_symbolic": {},
}
BOILERPLATE = " Let me think about this carefully, step by step, as a helpful assistant would."
# reasoning-gym's item i of a dataset with seed s is generated from seed s + i, so splits and run seeds get
# ranges SPLIT_STRIDE apart: (split, seed) never shares a generator seed with another pair below that many items.
SPLITS = ("train", "calibration", "validation", "test", "format", "selection")
SPLIT_STRIDE = 1_000_000


class TaskError(TokenSieveError, ValueError):
    pass


@dataclass
class Example:
    prompt: str
    solution: str
    answer: str
    noise: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) character spans in solution


def _steps(expression: str) -> str:
    """Left-to-right worked steps for a flat +/- expression: '4 - 1 - 7' -> '4 - 1 = 3\\n3 - 7 = -4'."""
    parts = expression.replace("- -", "+ ").split()
    acc, lines = int(parts[0]), []
    for op, num in zip(parts[1::2], parts[2::2], strict=True):
        new = acc + int(num) if op == "+" else acc - int(num) if op == "-" else None
        if new is None:
            raise TaskError(f"cannot write steps for operator {op!r}: use chain_sum or basic_arithmetic with +/-")
        lines.append(f"{acc} {op} {num} = {new}")
        acc = new
    return "\n".join(lines)


def load_task(task: str, n: int, seed: int) -> list[Example]:
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError("tasks need the reasoning-gym package: pip install 'tokensieve[train]'") from None
    cfg = dict(TASKS[task], operators=("+", "-")) if task == "basic_arithmetic" else TASKS[task]
    out = []
    for item in reasoning_gym.create_dataset(task, size=n, seed=seed, **cfg):
        meta = item["metadata"]
        if task == "gsm_symbolic":
            work = re.sub(r"\n*####.*$", "", meta["answer_cot"]).strip()
        else:
            work = _steps(meta["expression"].strip())
        out.append(Example(item["question"].strip() + "\n", work + f"\nAnswer: {item['answer']}", str(item["answer"])))
    return out


def split_seed(split: str, seed: int) -> int:
    """First generator seed of ``split`` for run seed ``seed``: a range of SPLIT_STRIDE seeds of its own."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if not 0 <= seed < 1000:
        raise TaskError(f"run seed {seed} is outside [0, 1000): its split ranges would overlap another seed's")
    return (seed * len(SPLITS) + SPLITS.index(split)) * SPLIT_STRIDE


def load_split(task: str, split: str, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
               ) -> list[Example]:
    """``n`` items of ``split`` for run seed ``seed``, skipping prompts in ``exclude`` and repeated prompts."""
    if n >= SPLIT_STRIDE // 2:
        raise TaskError(f"{n} items do not fit one split's seed range ({SPLIT_STRIDE})")
    out: list[Example] = []
    seen = set(exclude)
    draw = n
    while len(out) < n:
        draw = 2 * draw + 16  # item i depends only on seed + i, so a longer draw extends the shorter one
        out, seen = [], set(exclude)
        for ex in load_task(task, draw, split_seed(split, seed)):
            if ex.prompt not in seen:
                seen.add(ex.prompt)
                out.append(ex)
            if len(out) == n:
                break
    return out


class LeakError(TaskError):
    pass


def check_disjoint(evaluation: dict[str, list[Example]], fitted: dict[str, list[Example]]) -> None:
    """Raise ``LeakError`` if any evaluation prompt (test, validation) occurs in any set a model was fitted or
    calibrated on (training, reference, warm start), or if two evaluation sets share a prompt."""
    names = list(evaluation)
    for i, name in enumerate(names):
        prompts = {e.prompt for e in evaluation[name]}
        for other, items in [*fitted.items(), *((n, evaluation[n]) for n in names[i + 1 :])]:
            shared = prompts & {e.prompt for e in items}
            if shared:
                raise LeakError(f"{len(shared)} {name} prompt(s) also occur in {other}, e.g. {min(shared)!r}")


def inject_noise(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """Corrupt ``fraction`` of the examples: half get one intermediate digit changed, half a boilerplate line."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        if rng.random() >= fraction:
            out.append(ex)
            continue
        body = ex.solution[: ex.solution.rfind("\nAnswer:")]
        digits = [m.start() for m in re.finditer(r"\d", body)]
        if digits and rng.random() < 0.5:
            i = rng.choice(digits)
            wrong = rng.choice([d for d in "0123456789" if d != body[i]])
            out.append(Example(ex.prompt, ex.solution[:i] + wrong + ex.solution[i + 1 :], ex.answer, [(i, i + 1)]))
        else:
            out.append(Example(ex.prompt, BOILERPLATE[1:] + "\n" + ex.solution, ex.answer, [(0, len(BOILERPLATE))]))
    return out


def encode(tok: Any, ex: Example, max_len: int) -> dict[str, torch.Tensor]:
    """input_ids / labels (-100 on the prompt) / noise (1 on tokens overlapping a noise span) / answer (1 on
the final 'Answer: N' line's tokens)."""
    p = tok(ex.prompt, add_special_tokens=False)["input_ids"]
    s = tok(ex.solution + (tok.eos_token or ""), add_special_tokens=False, return_offsets_mapping=True)
    ids = (p + s["input_ids"])[:max_len]
    noisy = [int(any(a < hi and lo < b for a, b in ex.noise)) for lo, hi in s["offset_mapping"]]
    at = ex.solution.rfind("Answer:")
    final = (at, len(ex.solution)) if at >= 0 else (0, 0)  # the final 'Answer: N' line, for selection stats
    in_answer = [int(final[0] < hi and lo < final[1]) for lo, hi in s["offset_mapping"]]
    labels = ([IGNORE] * len(p) + s["input_ids"])[:max_len]
    noise = torch.tensor(([0] * len(p) + noisy)[:max_len])
    answer = torch.tensor(([0] * len(p) + in_answer)[:max_len])
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "noise": noise, "answer": answer}


def collate(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding, like transformers' DataCollatorForSeq2Seq: pad ids, -100 labels, 0 attention/noise."""
    width = max(len(x["input_ids"]) for x in items)
    def pad(key: str, value: int) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(x[key], (0, width - len(x[key])), value=value) for x in items])
    out = {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", IGNORE)}
    out["attention_mask"] = torch.stack([torch.arange(width) < len(x["input_ids"]) for x in items]).long()
    for key in ("noise", "answer"):  # ground truth for measuring selection; never reaches the model
        if all(key in x for x in items):
            out[key] = pad(key, 0)
    return out


def wrong_solution(ex: Example, seed: int) -> Example:
    """An incorrect trajectory for the same prompt: one digit of the first line changed, and the final answer
    changed to match nothing: the pair (ex, wrong) is a cDPO preference pair whose critical token is known."""
    rng = random.Random(seed)
    first = ex.solution.find("\n")
    digits = [m.start() for m in re.finditer(r"\d", ex.solution[: first if first > 0 else len(ex.solution)])]
    sol = ex.solution
    noise = []
    if digits:
        i = rng.choice(digits)
        sol = sol[:i] + rng.choice([d for d in "0123456789" if d != sol[i]]) + sol[i + 1 :]
        noise.append((i, i + 1))
    wrong = str(int(ex.answer) + rng.choice([-3, -2, -1, 1, 2, 3])) if ex.answer.lstrip("-").isdigit() else ex.answer
    head = sol[: sol.rfind("Answer:")]
    return Example(ex.prompt, head + f"Answer: {wrong}", wrong, [*noise, (len(head) + 8, len(head) + 8 + len(wrong))])
