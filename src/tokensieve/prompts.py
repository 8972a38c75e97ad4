"""Split a prompt into the context (compressed) and the question (appended afterwards).

With a chat template, the user turn is ``context + "\\n\\n" + question``: the context part ends where the
question begins, so the question and the assistant header come after compression, as in real reuse.
Without one (base models), it is ``context`` then ``"\\n\\nQuestion: ...\\nAnswer:"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

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

    def question_ids(self, question: str) -> list[int]:
        if self.chat:
            text = self._context_tail + question + self._question_tail
        else:
            text = f"{self.separator}Question: {question}\nAnswer:"
        return self.tokenizer.encode(text, add_special_tokens=False)
