"""Engines outside transformers that tokensieve drives (llama.cpp); each in its own module."""
