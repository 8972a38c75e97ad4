"""Inference engines other than tokensieve's own Hugging Face path: ``tokensieve.engines.llamacpp`` (KV eviction in
llama.cpp's own cache, through llama-cpp-python: the optional ``llamacpp`` extra) and ``tokensieve.engines.gguf_run``
(GGUF files run in llama.cpp to measure KL, perplexity and speed).

Importing this package loads no engine; each engine's module needs its extra."""
