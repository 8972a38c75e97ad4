"""Fidelity on natural text: how close a compressed cache stays to the full one, independent of task skill."""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tokensieve.measure.tasks.base import Sample, Task
from tokensieve.runtime.corpus import DEFAULT_SOURCES, documents, fingerprint

_STREAMS: dict[tuple, tuple[list[int], list[int]]] = {}


def token_stream(tokenizer: PreTrainedTokenizerBase, sources: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """The corpus as one token sequence (documents joined by blank lines) and the token offsets where
    paragraphs start. Tokenized once per tokenizer and corpus."""
    key = (tokenizer.name_or_path, len(tokenizer), sources)
    if key not in _STREAMS:
        text = "\n\n".join(documents(sources))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts_char = [m.end() for m in re.finditer(r"\n\n+", text)]
        offsets = [a for a, _ in enc["offset_mapping"]]
        starts, j = [], 0
        for c in starts_char:  # first token starting at or after each paragraph start
            while j < len(offsets) and offsets[j] < c:
                j += 1
            if j < len(offsets):
                starts.append(j)
        _STREAMS[key] = (list(enc["input_ids"]), sorted(set(starts)))
    return _STREAMS[key]


@dataclass
class Fidelity(Task):
    """``n_tokens`` of natural text from the offline corpus (plain language modelling, no chat template),
    followed by its true continuation. Samples take non-overlapping spans of the corpus (a seeded
    permutation of slots, each starting at a paragraph), so every sample reads different text.

    Scoring, per cell, against the full cache of the same sample (``bench.metrics``):
    - ``nll``: teacher-forced negative log-likelihood (nats/token) of the ``continuation`` true tokens,
      each predicted from the compressed cache plus the true tokens before it (lower is better);
    - ``kl``: mean KL(full || compressed) of the next-token distributions at those positions (nats);
    - ``top1``: fraction of those positions where both caches predict the same next token;
    - ``greedy``: the fraction of the full cache's ``greedy``-token greedy continuation that the compressed
      cache reproduces exactly before its first different token (free-running greedy agreement, computed
      exactly from one teacher-forced pass: until the first mismatch both decodes are identical);
    - ``nll_long``, ``kl_long``: the same at the long-range positions only, whose true token the full
      context predicts at least 1 nat better than its last 128 tokens alone (LongPPL's criterion). Natural
      text is mostly predictable from the recent tokens, which recency rules keep by construction; these
      positions are where a cache must have kept something from further back.
    The cell's ``score`` is ``top1``.
    """

    name = "fidelity"
    kind = "fidelity"
    continuation: int = 32
    greedy: int = 16
    sources: str = "+".join(DEFAULT_SOURCES)
    margin: int = 256  # slack per slot so that each span can start at a paragraph

    def sample(self, tokenizer: PreTrainedTokenizerBase, n_tokens: int, index: int, seed: int = 0) -> Sample:
        sources = tuple(self.sources.split("+"))
        stream, starts = token_stream(tokenizer, sources)
        bos = tokenizer.bos_token_id
        lead = [bos] if bos is not None and tokenizer.encode("a")[:1] == [bos] else []  # e.g. Gemma wants <bos>
        n_text = n_tokens - len(lead)
        span = n_text + self.continuation + 1
        slot = span + self.margin
        n_slots = len(stream) // slot
        if n_slots == 0:
            raise ValueError(f"the corpus ({len(stream)} tokens) is shorter than one sample of {n_tokens} tokens")
        order = list(range(n_slots))
        self.rng(n_tokens, -1, seed).shuffle(order)  # one permutation per (length, seed): disjoint samples
        lo = order[index % n_slots] * slot + (index // n_slots) * (self.margin // 4)  # reuse shifts past n_slots
        hi = lo + self.margin
        start = next((s for s in starts if lo <= s < hi), lo)
        ids = stream[start : start + span]
        return Sample(
            self.spec(),
            index,
            n_tokens,
            context_ids=lead + ids[:n_text],
            continuation=ids[n_text:],
            meta={
                "start": start,
                "corpus": fingerprint(sources),
                "context_tokens": n_tokens,
                "greedy": self.greedy,
                "lead": len(lead),
            },
        )
