"""Quantized models as files engines load: GGUF for llama.cpp (``gguf``), compressed-tensors for transformers
and vLLM (``compressed``); ``grids`` holds the code grids GPTQ rounds on so each file stores its codes exactly."""
