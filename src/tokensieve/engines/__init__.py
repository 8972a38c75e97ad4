"""Inference engines other than tokensieve's own Hugging Face path, where token importance acts in the engine's own
cache: ``tokensieve.engines.llamacpp`` (llama.cpp through llama-cpp-python, the optional ``llamacpp`` extra).

Importing this package loads no engine; each engine's module needs its extra."""
