"""``tokensieve.explain``: build the problem (prompt, context positions, target), run the methods, measure."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensieve.core.observe.hooks import prepare
from tokensieve.explain import faithfulness as faith
from tokensieve.explain.base import Explainer
from tokensieve.explain.methods import get_explainer
from tokensieve.explain.result import Explanation
from tokensieve.explain.target import ExplainError, Problem, Target
from tokensieve.runtime.prompts import PromptFormat, StopAtText, clean_answer


def baseline_token(tok: PreTrainedTokenizerBase) -> int:
    """The replacement for removed tokens: the unknown token, else padding, else end of text."""
    for v in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id):
        if v is not None:
            return int(v)
    raise ExplainError("the tokenizer has no unk, pad or eos token to replace removed tokens with: pass baseline=ID")


def _context_ids(tok: PreTrainedTokenizerBase, fmt: PromptFormat, context: str) -> tuple[list[int], int, list]:
    """The context part of the prompt (``fmt.context_ids``), where the context text starts in it, and the
    character offsets of the context tokens within ``context``."""
    if not getattr(tok, "is_fast", False):
        raise ExplainError("explain needs a fast tokenizer (character offsets for words): load it with use_fast=True")
    head = fmt._context_head if fmt.chat else ""
    enc = tok(head + context, add_special_tokens=not fmt.chat, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    start = next((i for i, (a, b) in enumerate(offs) if b > a and a >= len(head)), len(ids))
    rel = [(max(0, a - len(head)), b - len(head)) for a, b in offs[start:]]
    return ids, start, rel


def _generate(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    stop = [] if PromptFormat(tok).chat else [StopAtText(tok, ids.shape[1])]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            stopping_criteria=stop,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ends = {tok.eos_token_id, tok.pad_token_id} | set(eos if isinstance(eos, list) else [eos])
    cut = next((i for i, t in enumerate(new) if t in ends), len(new))
    return new[:cut]


def make_problem(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    context: str,
    question: str,
    continuation: str | None = None,
    alternative: str | None = None,
    position: int | None = None,
    answer_prefix: str = "",
    max_new_tokens: int = 16,
    baseline: int | None = None,
) -> tuple[Problem, list[tuple[int, int]]]:
    """The problem (prompt, context positions, target) and the context tokens' character offsets."""
    if not context.strip():
        raise ExplainError("the context is empty: pass the text whose tokens the answer should be traced to")
    fmt = PromptFormat(tok)
    ctx, start, offsets = _context_ids(tok, fmt, context)
    prompt = ctx + fmt.question_ids(question, answer_prefix)
    if continuation is not None:
        ids, kind = tok.encode(continuation, add_special_tokens=False), "continuation"
    else:
        ids, kind = _generate(model, tok, prompt, max_new_tokens), "generated"
    alt = None if alternative is None else tok.encode(alternative, add_special_tokens=False)
    target = Target(
        ids,
        "contrastive" if alt is not None else kind,
        position,
        alt,
        clean_answer(tok.decode(ids, skip_special_tokens=True)),
        alternative or "",
    )
    b = baseline_token(tok) if baseline is None else baseline
    problem = Problem(model, torch.tensor(prompt, device=model.device), start, len(ctx), target, b)
    return problem, offsets


def explain(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    context: str,
    question: str,
    method: str | Explainer | Sequence[str | Explainer] = "reagent",
    *,
    continuation: str | None = None,
    alternative: str | None = None,
    position: int | None = None,
    answer_prefix: str = "",
    max_new_tokens: int = 16,
    faithfulness: bool = True,
    n_random: int = 1,
    params: dict[str, dict[str, Any]] | None = None,
) -> Explanation:
    """Attribute the answer (generated greedily, or ``continuation``; contrastive against ``alternative``;
    one answer token with ``position``) to the context's tokens with each ``method``, then measure each
    ranking's faithfulness (``faithfulness=False`` skips it) and the methods' rank agreement."""
    prepare(model)
    methods = [method] if isinstance(method, str | Explainer) else list(method)
    explainers = [get_explainer(m, **(params or {}).get(m if isinstance(m, str) else m.id, {})) for m in methods]
    problem, offsets = make_problem(
        model, tok, context, question, continuation, alternative, position, answer_prefix, max_new_tokens
    )
    scores, seconds = {}, {}
    for e in explainers:
        start = time.perf_counter()
        scores[e.id] = e.attribute(problem).float().cpu()
        seconds[e.id] = time.perf_counter() - start
    faith_rows = faith.evaluate(problem, scores, n_random=n_random) if faithfulness else {}
    tokens = [context[a:b] for a, b in offsets]
    return Explanation(
        context,
        tokens,
        offsets,
        problem.target.text,
        problem.target,
        scores,
        seconds,
        faith_rows,
        faith.agreement(scores) if len(scores) > 1 else [],
        question,
    )
