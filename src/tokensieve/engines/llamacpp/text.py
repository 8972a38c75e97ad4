"""Tokens and prompts with llama.cpp's own tokenizer and chat template (the GGUF's, no Hugging Face tokenizer).

The split matches ``tokensieve.runtime.prompts.PromptFormat``: with a chat template the user turn is
``context + "\\n\\n" + question``, the context part ending where the question begins, so the question and the
assistant header come after compression; without one it is ``context`` then ``"\\n\\nQuestion: ...\\nAnswer:"``.
"""

from __future__ import annotations

import ctypes

from tokensieve.engines.llamacpp.ffi import lib

_MARK = "\u2063TOKENSIEVE-QUESTION\u2063"
BASE_STOP = "\nQuestion:"


def tokenize(vocab: int, text: str, add_special: bool) -> list[int]:
    raw = text.encode("utf-8")
    cap = len(raw) + 16
    buf = (lib.llama_token * cap)()
    n = lib.llama_tokenize(vocab, raw, len(raw), buf, cap, add_special, True)
    if n < 0:  # too small: llama.cpp returns minus the count it needs
        cap = -n
        buf = (lib.llama_token * cap)()
        n = lib.llama_tokenize(vocab, raw, len(raw), buf, cap, add_special, True)
    return list(buf[:n])


def piece(vocab: int, token: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


def detokenize(vocab: int, tokens: list[int]) -> str:
    return b"".join(piece(vocab, t) for t in tokens).decode("utf-8", "replace")


def _apply_template(template: bytes, content: str) -> str | None:
    msg = (lib.llama_chat_message * 1)()
    msg[0].role, msg[0].content = b"user", content.encode("utf-8")
    size = 4 * len(content) + 1024
    buf = ctypes.create_string_buffer(size)
    n = lib.llama_chat_apply_template(template, msg, 1, True, buf, size)
    if n < 0 or n > size:  # a template llama.cpp's built-in list does not know
        return None
    return buf.raw[:n].decode("utf-8", "replace")


class Prompt:
    """Context and question token ids for one model."""

    def __init__(self, model: int, vocab: int, separator: str = "\n\n"):
        self.vocab, self.separator = vocab, separator
        template = lib.llama_model_chat_template(model, None)
        text = _apply_template(template, "{context}" + separator + _MARK) if template else None
        self.chat = text is not None and _MARK in text and "{context}" in text
        if self.chat:
            head, tail = text.split(_MARK)
            self.context_head, self.context_tail = head.split("{context}")
            self.question_tail = tail

    def context_ids(self, context: str) -> list[int]:
        if self.chat:
            return tokenize(self.vocab, self.context_head + context, add_special=False)
        return tokenize(self.vocab, context, add_special=True)

    def question_ids(self, question: str, answer_prefix: str = "") -> list[int]:
        if self.chat:
            text = self.context_tail + question + self.question_tail + answer_prefix
        else:
            text = f"{self.separator}Question: {question}\nAnswer:" + (" " + answer_prefix if answer_prefix else "")
        return tokenize(self.vocab, text, add_special=False)


class Encoder:
    """``encode(text, add_special_tokens=...)`` with llama.cpp's tokenizer: what the project's task builders
    (``runtime.passkey``, ``measure.tasks``) count tokens with."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return tokenize(self.vocab, text, add_special=add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return detokenize(self.vocab, list(ids))


def clean_answer(text: str) -> str:
    return text.split(BASE_STOP)[0].strip()


__all__ = ["Encoder", "Prompt", "clean_answer", "detokenize", "tokenize"]
