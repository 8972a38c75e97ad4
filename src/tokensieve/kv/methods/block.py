from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tokensieve.core.observe.inputs import ScoreInputs
from tokensieve.errors import ParameterError
from tokensieve.kv.methods.base import Method
from tokensieve.kv.methods.rerotate import Rerotate
from tokensieve.kv.methods.wrap import Wrapper


def check_blockwise(method: Method) -> None:
    """Raise ``ParameterError`` unless ``method`` can judge held tokens from one block's forward."""
    need = method.needs()
    why = None
    if need.whole_pass:
        why = "needs a pass over the whole prefill"
    elif need.stats or need.probes or need.layer_input or need.final_hidden:
        why = "needs statistics of every prefill query or each token's attention input"
    elif not method.evicts_only or method.changes_prefill:
        why = "acts on the cache its own way"
    if why:
        raise ParameterError(
            f"block prefill: {method.id} {why}; use a score from keys, values and recent queries "
            "(keydiff, knorm, snapkv, tova, lagkv, streaming)"
        )


@dataclass
class Block(Wrapper):
    """True chunked prefill under a budget (KeyDiff's block-wise prefill), as a method id for the CLI and the bench:
    ``tokensieve.compress(..., "block", base="keydiff", size=128, keep=0.25)`` prefills the context ``size`` tokens
    at a time and cuts every full layer back to its budget after each block by ``base``'s score (``kv/blockwise.py``,
    ``compress_blocks``, does it; ``compress`` hands this method to it). ``rerotate=true`` renumbers the held tokens
    to 0 .. n-1 after every block (``rerotate:base=<base>``), so no position exceeds budget + block.

    It runs its own prefill (``own_prefill``): a prefilled cache (``Prefill.compress``, ``SieveCache``) refuses it,
    since cutting a full prefill's cache afterwards is the other method. A base that cannot judge held tokens from
    one block's forward (kvzip's whole pass, all-query statistics, its own layout) is a one-line ``ParameterError``
    at construction. Deviation from kvpress's ``BlockPress``: kvpress runs the full prefill first and then scores
    blocks of its keys (the first ``n_kept`` tokens, then blocks of ``block_size``); here later layers only ever saw
    the held tokens, and the first block takes the context's remainder (block to 2 x block - 1 tokens)."""

    id = "block"
    kind: ClassVar[str] = "chunked prefill"
    paper = "KeyDiff's block-wise prefill (Park et al., 2025, arXiv 2504.15364); kvpress BlockPress"
    rule = "prefill size tokens at a time; after each block every layer is cut back to its budget by base's score"
    own_prefill: ClassVar[bool] = True

    base: str = "keydiff"
    size: int = 128
    rerotate: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ParameterError(f"block: size={self.size!r} must be a positive number of tokens, e.g. size=128")
        super().__post_init__()
        if self.rerotate:
            self._inner = Rerotate(base=self.base)
        check_blockwise(self._inner)
        if self._inner.needs().window > self.size:
            raise ParameterError(f"block: size={self.size} is shorter than {self._inner.id}'s window of "
                                 f"{self._inner.needs().window} queries: use a larger size")  # fmt: skip

    @property
    def scorer(self) -> Method:
        """What cuts each layer after every block (the base, or ``rerotate`` over it)."""
        return self._inner

    def act(self, layer: Any, x: ScoreInputs, budget: int, allocator: Any, inplace: bool) -> Any:
        raise ParameterError("block prefills the context itself, block by block: use tokensieve.compress / generate "
                             "(or kv.compress_blocks), not a prefilled cache")  # fmt: skip
