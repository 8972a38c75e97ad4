"""Calibration and evaluation text from offline sources, kept disjoint.

Calibration: the even-numbered topics of Python's own help text (``pydoc_data.topics``, shipped with
CPython). Evaluation: the odd-numbered topics, after the project's bundled essays. The pass-key task
uses the bundled essays as its haystack (``tasks.passkey``). ``evaluation_windows(domain=...)`` picks the
essays ("prose": a different domain from the calibration text) or the odd topics only ("docs": the
calibration's domain, disjoint topics): GPTQ fits its calibration domain, so the two can rank methods
differently.
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


def calibration_text() -> str:
    return "\n\n".join(_topics()[0::2])


DOMAINS = ("prose", "docs")


def evaluation_text(domain: str = "prose") -> str:
    """The "prose" text: the essays, then the odd topics (so long windows still fit); "docs": odd topics only."""
    if domain not in DOMAINS:
        raise CalibrationError(f"unknown evaluation domain {domain!r}: use one of {', '.join(DOMAINS)}")
    return "\n\n".join((list(paragraphs()) if domain == "prose" else []) + _topics()[1::2])


def calibration_windows(tokenizer: PreTrainedTokenizerBase, n: int, length: int, seed: int = 0) -> list[Tensor]:
    """``n`` windows of ``length`` tokens ``[1, length]`` at seeded random offsets in the calibration text."""
    ids = torch.tensor(tokenizer(calibration_text(), add_special_tokens=False).input_ids)
    if ids.numel() < length + 1 or n < 1:
        raise CalibrationError(f"need n >= 1 windows of {length} tokens; the calibration text has {ids.numel()}")
    starts = torch.randint(0, ids.numel() - length, (n,), generator=torch.Generator().manual_seed(seed))
    return [ids[s : s + length].unsqueeze(0) for s in starts.tolist()]


def evaluation_windows(
    tokenizer: PreTrainedTokenizerBase, n: int, length: int = 512, domain: str = "prose"
) -> list[Tensor]:
    """The first ``n`` consecutive ``length``-token windows of the evaluation text of ``domain``."""
    ids = torch.tensor(tokenizer(evaluation_text(domain), add_special_tokens=False).input_ids)
    return [ids[i * length : (i + 1) * length].unsqueeze(0) for i in range(min(n, ids.numel() // length))]
