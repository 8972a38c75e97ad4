"""Split a prompt into the context (compressed) and the question (appended afterwards).

With a chat template, the user turn is ``context + "\\n\\n" + question``: the context part ends where the
question begins, so the question and the assistant header come after compression, as in real reuse.
Without one (base models), it is ``context`` then ``"\\n\\nQuestion: ...\\nAnswer:"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

_MARK = "\u2063TOKENSIEVE-QUESTION\u2063"
BASE_STOP = "\nQuestion:"  # where a base model's answer ends
BASE_STOPS = (BASE_STOP, "Answer:")  # ... or where it starts a second answer of its own
# end-of-turn tokens of the common chat formats: a base checkpoint's vocabulary still has its family's, and its
# converted generation config often lists only <eos> (Gemma-3 GGUF: [1], where the original lists [1, 106])
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


@dataclass
class PromptFormat:
    tokenizer: PreTrainedTokenizerBase
    separator: str = "\n\n"

    def __post_init__(self) -> None:
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        if self.chat:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "{context}" + self.separator + _MARK}],
                tokenize=False,
                add_generation_prompt=True,
            )
            head, tail = text.split(_MARK)
            self._context_head, self._context_tail = head.split("{context}")
            self._question_tail = tail

    def context_ids(self, context: str) -> list[int]:
        if self.chat:
            return self.tokenizer.encode(self._context_head + context, add_special_tokens=False)
        return self.tokenizer.encode(context, add_special_tokens=True)

    def question_ids(self, question: str, answer_prefix: str = "") -> list[int]:
        """The question turn; ``answer_prefix`` starts the answer for the model ("The pass key is"), which
        keeps small and base models on task. The prefix is not part of the returned answer."""
        if self.chat:
            text = self._context_tail + question + self._question_tail + answer_prefix
        else:
            text = f"{self.separator}Question: {question}\nAnswer:" + (" " + answer_prefix if answer_prefix else "")
        return self.tokenizer.encode(text, add_special_tokens=False)


def stop_ids(tokenizer: PreTrainedTokenizerBase | None, generation_config: object = None) -> list[int]:
    """The ids that end an answer: the generation config's end-of-sequence ids plus the chat template's own
    end-of-turn token (the special token right after an assistant message; converted GGUF copies often list only
    ``<eos>`` and the answer then runs on into a new turn)."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN if t in vocab]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None:
        turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARK}]
        try:
            text = tokenizer.apply_chat_template(turn, tokenize=False)
        except Exception:  # a template that refuses this turn shape: the config's ids only
            text = ""
        if _MARK in text:
            after = tokenizer.encode(text.split(_MARK, 1)[1], add_special_tokens=False)
            special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            ids += [t for t in after[:2] if t in special][:1]
    return sorted(set(ids))


def clean_answer(text: str) -> str:
    for stop in BASE_STOPS:
        text = text.split(stop)[0]
    return text.strip()


class StopAtText(StoppingCriteria):
    """Stop a row once its new text contains ``stop`` (a base model running on into the next "Question:").

    transformers' ``stop_strings`` precomputes tables over the whole vocabulary on every call (seconds for
    Gemma's 262k tokens); decoding the last few new tokens is enough here.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_len: int,
        stop: str | tuple[str, ...] = BASE_STOPS,
        tail: int = 8,
    ):
        self.tokenizer, self.prompt_len, self.tail = tokenizer, prompt_len, tail
        self.stop = (stop,) if isinstance(stop, str) else stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :][:, -self.tail :]
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]
        done = [any(s in text for s in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
