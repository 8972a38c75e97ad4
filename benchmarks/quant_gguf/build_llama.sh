#!/usr/bin/env bash
# Builds llama.cpp's own llama-imatrix and llama-quantize from the llama.cpp vendored in llama-cpp-python's
# sdist (the same version as the installed Python binding that run.py evaluates with), for run.py's imatrix
# stage. Benchmarks only: nothing in the tests or CI needs these binaries.
#   benchmarks/quant_gguf/build_llama.sh [DEST]   (default /tmp/llama_tools; binaries in DEST/bin)
# SDIST=path/to/llama_cpp_python-0.3.36.tar.gz skips the download. Needs cmake, ninja, a C++ compiler.
set -euo pipefail
VERSION=0.3.36
DEST=${1:-/tmp/llama_tools}
PY=${PY:-$PWD/.venv/bin/python}  # before the cd below
mkdir -p "$DEST"
cd "$DEST"
if [ -z "${SDIST:-}" ]; then
  # --no-binary for this one package only: `:all:` would also build every build dependency from source
  "$PY" -m pip download "llama-cpp-python==$VERSION" --no-deps --no-binary llama-cpp-python -d . -q
  SDIST=$DEST/llama_cpp_python-$VERSION.tar.gz
fi
sha256sum "$SDIST"
tar xzf "$SDIST"
SRC=$DEST/llama_cpp_python-$VERSION/vendor/llama.cpp
cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF
# only the two targets run.py calls; JOBS=2 by default (the machine has 2 cores)
ninja -C "$SRC/build" -j"${JOBS:-2}" llama-imatrix llama-quantize
mkdir -p "$DEST/bin"
cp "$SRC/build/bin/llama-imatrix" "$SRC/build/bin/llama-quantize" "$DEST/bin/"
"$DEST/bin/llama-quantize" --help 2>&1 | head -1 || true
