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


def clean_answer(text: str) -> str:
    return text.split(BASE_STOP)[0].strip()


class StopAtText(StoppingCriteria):
    """Stop a row once its new text contains ``stop`` (a base model running on into the next "Question:").

    transformers' ``stop_strings`` precomputes tables over the whole vocabulary on every call (seconds for
    Gemma's 262k tokens); decoding the last few new tokens is enough here.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, stop: str = BASE_STOP, tail: int = 8):
        self.tokenizer, self.prompt_len, self.stop, self.tail = tokenizer, prompt_len, stop, tail

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :][:, -self.tail :]
        done = [self.stop in self.tokenizer.decode(row, skip_special_tokens=True) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
