"""A pass key hidden at a chosen depth in natural prose (the demo and the retrieval tests)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tokensieve.runtime.corpus import paragraphs

QUESTION = "What is the pass key mentioned in the text? Answer with the number only."
# the repeated filler of the original pass-key benchmark (Landmark Attention, Mohtashami & Jaggi, 2023)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


@dataclass
class PassKey:
    context: str
    key: str
    depth: float
    question: str = QUESTION
    answer_prefix: str = "The pass key is"

    def correct(self, answer: str) -> bool:
        return self.key in answer


def passkey_context(
    tokenizer: PreTrainedTokenizerBase, n_tokens: int, depth: float, key: str = "68213", haystack: str = "prose"
) -> PassKey:
    """About ``n_tokens`` of text with the needle inserted between paragraphs at fraction ``depth``
    (0 = start, 1 = end). ``haystack`` is ``prose`` (the bundled essays, cycled in order) or ``filler``
    (the classic repeated sentences)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} must be in [0, 1]")
    budget = n_tokens - len(tokenizer.encode(needle(key), add_special_tokens=False))
    chosen: list[str] = []
    used = 0
    if haystack not in ("prose", "filler"):
        raise ValueError(f"haystack {haystack!r} must be 'prose' or 'filler'")
    paras = paragraphs() if haystack == "prose" else (FILLER,)
    i = 0
    while used < budget:
        p = paras[i % len(paras)]
        cost = len(tokenizer.encode(p + "\n\n", add_special_tokens=False))
        if used + cost > budget and chosen:
            break
        chosen.append(p)
        used += cost
        i += 1
    at = round(depth * len(chosen))
    chosen.insert(at, needle(key))
    return PassKey("\n\n".join(chosen), key, depth)
