"""The llama.cpp engine: prefill a context into sequence 0, decode batches, answer on a fork.

Bookkeeping that makes eviction exact: ``cells`` lists, for every KV cell the context holds, its position, in
cell order (cell ``i`` is ``cells[i]``), and ``tokens`` maps a position to its token. An empty cache fills cells
from 0 up; after an eviction :mod:`evict` restores the sequence compactly (save, clear, load), which puts the kept
cells back at 0..n-1 in the order they were saved, so the list stays true after any number of evictions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from tokensieve.engines.llamacpp.ffi import lib
from tokensieve.engines.llamacpp.model import Model, Settings
from tokensieve.engines.llamacpp.text import Encoder, Prompt, clean_answer, detokenize
from tokensieve.errors import EmptyContextError, EngineError, ParameterError, check_count

CONTEXT, FORK = 0, 1


@dataclass
class Answer:
    text: str
    tokens: list[int]
    decode_seconds: float
    prompt_seconds: float


@dataclass
class Sequence:
    """Sequence 0's cells: ``cells[i]`` is the position in cell ``i``; ``tokens[pos]`` its token."""

    cells: list[int] = field(default_factory=list)
    tokens: dict[int, int] = field(default_factory=dict)

    @property
    def next_pos(self) -> int:
        return max(self.cells) + 1 if self.cells else 0

    def __len__(self) -> int:
        return len(self.cells)


class Engine:
    """One model, one context; ``seq`` is what sequence 0 holds."""

    def __init__(self, model: str | os.PathLike, settings: Settings | None = None, **kw: object):
        if settings is None:
            settings = Settings(**kw)  # type: ignore[arg-type]
        self.m = Model(model, settings)
        self.prompt = Prompt(self.m.model, self.m.vocab)
        self.tokenizer = Encoder(self.m.vocab)
        self.seq = Sequence()
        self.batch = lib.llama_batch_init(self.m.settings.n_batch, 0, self.m.settings.n_seq)

    @property
    def settings(self) -> Settings:
        return self.m.settings

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            lib.llama_batch_free(self.batch)
            self.batch = None
        self.m.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decoding ---------------------------------------------------------------------------------------------

    def decode(self, tokens: list[int], start: int, seq: int, logits: bool = True) -> np.ndarray | None:
        """Decode ``tokens`` at positions ``start, start+1, ...`` of ``seq`` in ``n_batch`` pieces; the last
        token's logits (a copy) when ``logits``."""
        tap = self.m.tap
        # while attention is read, one llama_decode is one ubatch, so the tap knows its queries' positions
        n_batch = min(self.settings.n_batch, self.settings.n_ubatch) if tap.active else self.settings.n_batch
        out = None
        for lo in range(0, len(tokens), n_batch):
            part = tokens[lo : lo + n_batch]
            b = self.batch
            for i, t in enumerate(part):
                b.token[i], b.pos[i], b.n_seq_id[i] = t, start + lo + i, 1
                b.seq_id[i][0] = seq
                b.logits[i] = 0
            last = logits and lo + len(part) == len(tokens)
            b.logits[len(part) - 1] = 1 if last else 0
            b.n_tokens = len(part)
            tap.new_decode(list(range(start + lo, start + lo + len(part))))
            rc = lib.llama_decode(self.m.ctx, b)
            if tap.error is not None:
                err, tap.error = tap.error, None
                raise err
            if rc != 0:
                raise EngineError(
                    f"llama_decode failed (code {rc}) on {len(part)} tokens at position {start + lo} of sequence "
                    f"{seq}: the context (n_ctx={self.settings.n_ctx}) may be full"
                )
            if last:
                ptr = lib.llama_get_logits_ith(self.m.ctx, len(part) - 1)
                out = np.ctypeslib.as_array(ptr, shape=(self.m.n_vocab,)).copy()
        return out

    def prefill(self, ids: list[int]) -> np.ndarray | None:
        """Append ``ids`` to sequence 0 at the next positions; the last token's logits."""
        if not ids:
            raise EmptyContextError("the context is empty: nothing to prefill")
        start = self.seq.next_pos
        if len(self.seq) + len(ids) > self.settings.n_ctx:
            raise ParameterError(
                f"{len(self.seq) + len(ids)} tokens do not fit n_ctx={self.settings.n_ctx}: raise n_ctx, or read "
                "the document in chunks under a budget (tokensieve.engines.llamacpp.read_chunked)"
            )
        out = self.decode(ids, start, CONTEXT)
        self.seq.cells.extend(range(start, start + len(ids)))
        self.seq.tokens.update(zip(range(start, start + len(ids)), ids, strict=True))
        return out

    def fork(self) -> int:
        """Sequence 1 as a copy of sequence 0 (shared cells, no data copied); returns its next position."""
        self.drop_fork()
        lib.llama_memory_seq_cp(self.m.mem, CONTEXT, FORK, -1, -1)
        return int(lib.llama_memory_seq_pos_max(self.m.mem, CONTEXT)) + 1

    def drop_fork(self) -> None:
        lib.llama_memory_seq_rm(self.m.mem, FORK, -1, -1)

    def set_threads(self, threads: int) -> None:
        """CPU threads for decoding and prefill from now on (llama.cpp's ``llama_set_n_threads``)."""
        check_count("threads", threads)
        lib.llama_set_n_threads(self.m.ctx, threads, threads)
        self.m.settings.threads = threads

    def clear(self) -> None:
        lib.llama_memory_clear(self.m.mem, True)
        self.seq = Sequence()

    # -- answering --------------------------------------------------------------------------------------------

    def answer(self, question: str, max_new_tokens: int = 32, answer_prefix: str = "") -> Answer:
        """Greedy answer on a fork of sequence 0 (the context is left as it was: one context, many questions)."""
        check_count("max_new_tokens", max_new_tokens)
        if not self.seq.cells:
            raise EmptyContextError("nothing is prefilled: prefill a context before asking a question")
        q = self.prompt.question_ids(question, answer_prefix)
        return self.generate(q, max_new_tokens)

    def logits_after(self, prompt_ids: list[int]) -> np.ndarray:
        """The next-token logits after ``prompt_ids`` on a fork of sequence 0 (the context is left as it was)."""
        pos = self.fork()
        try:
            out = self.decode(prompt_ids, pos, FORK)
        finally:
            self.drop_fork()
        assert out is not None
        return out

    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: bool = True) -> Answer:
        """Greedy tokens after ``prompt_ids`` on a fork; ``stop=False`` goes on past end-of-generation tokens
        (a fixed count, for timing)."""
        pos = self.fork()
        try:
            t0 = time.perf_counter()
            logits = self.decode(prompt_ids, pos, FORK)
            t1 = time.perf_counter()
            pos += len(prompt_ids)
            out: list[int] = []
            while logits is not None and len(out) < max_new_tokens:
                tok = int(np.argmax(logits))
                if stop and lib.llama_vocab_is_eog(self.m.vocab, tok):
                    break
                out.append(tok)
                if len(out) == max_new_tokens:
                    break
                logits = self.decode([tok], pos, FORK)
                pos += 1
            t2 = time.perf_counter()
        finally:
            self.drop_fork()
        return Answer(clean_answer(detokenize(self.m.vocab, out)), out, t2 - t1, t1 - t0)

    # -- measuring --------------------------------------------------------------------------------------------

    def state_bytes(self) -> int:
        """Bytes of sequence 0's saved state (llama.cpp's own count: what a state file holds)."""
        return int(lib.llama_state_seq_get_size(self.m.ctx, CONTEXT))

    def pos_range(self) -> tuple[int, int]:
        return int(lib.llama_memory_seq_pos_min(self.m.mem, CONTEXT)), int(
            lib.llama_memory_seq_pos_max(self.m.mem, CONTEXT)
        )


__all__ = ["CONTEXT", "FORK", "Answer", "Engine", "Sequence"]
