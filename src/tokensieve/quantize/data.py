"""Calibration and evaluation text from offline sources, kept disjoint.

Calibration: the even-numbered topics of Python's own help text (``pydoc_data.topics``, shipped with
CPython). Evaluation: the odd-numbered topics, after the project's bundled essays. The pass-key task
uses the bundled essays as its haystack (``tasks.passkey``). ``evaluation_windows(domain=...)`` picks the
essays ("prose": a different domain from the calibration text) or the odd topics only ("docs": the
calibration's domain, disjoint topics): GPTQ fits its calibration domain, so the two can rank methods
differently. Calibration ``source="both"`` covers both domains: half the windows from the even topics, half
from the essays' last 9 paragraphs; its held-out prose is ``domain="essays"`` (the first 11 paragraphs only:
two 512-token windows).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tokensieve.errors import CalibrationError
from tokensieve.runtime.corpus import paragraphs


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


HELD_OUT_ESSAYS = 11  # of 20 paragraphs: two 512-token windows with either bundled tokenizer; ~1000 tokens left


def _essays(held_out: bool) -> list[str]:
    """The essays' first paragraphs (held out from calibration) or the rest (calibration's prose)."""
    ps = list(paragraphs())
    return ps[:HELD_OUT_ESSAYS] if held_out else ps[HELD_OUT_ESSAYS:]


SOURCES = ("docs", "essays", "both")


def calibration_text(source: str = "docs") -> str:
    """``docs``: the even topics; ``essays``: the essays' last paragraphs (``both`` mixes windows of the two)."""
    if source not in SOURCES[:2]:
        raise CalibrationError(f"unknown calibration text {source!r}: use one of {', '.join(SOURCES[:2])}")
    return "\n\n".join(_topics()[0::2] if source == "docs" else _essays(held_out=False))


DOMAINS = ("prose", "docs", "essays")


def evaluation_text(domain: str = "prose") -> str:
    """The "prose" text: the essays, then the odd topics (so long windows still fit); "docs": odd topics only;
    "essays": the essays' first paragraphs only (held out from calibration ``source="both"``)."""
    if domain not in DOMAINS:
        raise CalibrationError(f"unknown evaluation domain {domain!r}: use one of {', '.join(DOMAINS)}")
    if domain == "essays":
        return "\n\n".join(_essays(held_out=True))
    return "\n\n".join((list(paragraphs()) if domain == "prose" else []) + _topics()[1::2])


def calibration_windows(
    tokenizer: PreTrainedTokenizerBase, n: int, length: int, seed: int = 0, source: str = "docs"
) -> list[Tensor]:
    """``n`` windows of ``length`` tokens ``[1, length]`` at seeded random offsets in the calibration text;
    ``source="both"``: the first ``n - n // 2`` from the topics, the other ``n // 2`` from the essays."""
    if source not in SOURCES:
        raise CalibrationError(f"unknown calibration text {source!r}: use one of {', '.join(SOURCES)}")
    counts = {"docs": n - n // 2, "essays": n // 2} if source == "both" else {source: n}
    gen = torch.Generator().manual_seed(seed)
    out = []
    for text, k in counts.items():
        ids = torch.tensor(tokenizer(calibration_text(text), add_special_tokens=False).input_ids)
        if ids.numel() < length + 1 or n < 1:
            raise CalibrationError(f"need n >= 1 windows of {length} tokens; the calibration text has {ids.numel()}")
        starts = torch.randint(0, ids.numel() - length, (k,), generator=gen)
        out += [ids[s : s + length].unsqueeze(0) for s in starts.tolist()]
    return out


def evaluation_windows(
    tokenizer: PreTrainedTokenizerBase, n: int, length: int = 512, domain: str = "prose"
) -> list[Tensor]:
    """The first ``n`` consecutive ``length``-token windows of the evaluation text of ``domain``."""
    ids = torch.tensor(tokenizer(evaluation_text(domain), add_special_tokens=False).input_ids)
    return [ids[i * length : (i + 1) * length].unsqueeze(0) for i in range(min(n, ids.numel() // length))]
