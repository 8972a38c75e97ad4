"""tokensieve inside llama.cpp: importance-scored eviction in llama.cpp's own KV cache (through llama-cpp-python).

Open a GGUF (:class:`Engine`), :func:`compress` a context with scores read from llama.cpp's own attention
(``cb_eval``), answer questions from the compressed cache, :func:`read_chunked` a document longer than the cache
under a budget, and :func:`save` / :func:`load` the compressed sequence as a file. Needs the ``llamacpp`` extra.
"""

from tokensieve.engines.llamacpp.aggregate import AGGREGATES, DEFAULT, aggregate
from tokensieve.engines.llamacpp.chunked import ChunkedReport, read_chunked, read_shifted
from tokensieve.engines.llamacpp.compress import Report, compress
from tokensieve.engines.llamacpp.engine import Answer, Engine
from tokensieve.engines.llamacpp.evict import evict
from tokensieve.engines.llamacpp.model import Settings, gguf_path
from tokensieve.engines.llamacpp.scores import METHODS
from tokensieve.engines.llamacpp.state import load, save

__all__ = [
    "AGGREGATES",
    "DEFAULT",
    "METHODS",
    "Answer",
    "ChunkedReport",
    "Engine",
    "Report",
    "Settings",
    "aggregate",
    "compress",
    "evict",
    "gguf_path",
    "load",
    "read_chunked",
    "read_shifted",
    "save",
]
