"""A long prose prompt of a chosen token length that asks for a long continuation (benchmarks only)."""

from __future__ import annotations

import torch

QUESTION = "Write a long essay that continues the text above, in the same style, with many new details."


def continuation_ids(tok, n_tokens: int) -> torch.Tensor:
    """[1, ~n_tokens]: bundled essays (cycled) in the chat template, then the request to continue."""
    import tokensieve as ts
    from tokensieve.runtime.corpus import paragraphs

    fmt = ts.PromptFormat(tok)
    tail = fmt.question_ids(QUESTION)
    paras, text, i = paragraphs(), [], 0
    while len(tok.encode("\n\n".join(text))) < n_tokens:
        text.append(paras[i % len(paras)])
        i += 1
    body = tok.encode("\n\n".join(text))
    head = fmt.context_ids("")
    body = body[: max(1, n_tokens - len(tail) - len(head))]
    return torch.tensor([fmt.context_ids(tok.decode(body)) + tail])
