#!/usr/bin/env bash
# Optional: kvpress for `tokensieve bench --compare kvpress`, in its own environment (.venv-kvpress).
#
# kvpress 0.5.5 (the latest on PyPI) requires transformers<5.3, and its hooks read `cache_position`, which
# transformers 5.3+ no longer passes to attention layers, so it cannot run inside tokensieve's .venv
# (transformers 5.x latest). The bench runs it in a subprocess with this environment's python, on the
# same samples; the worker imports only torch, transformers and kvpress (never tokensieve).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-kvpress/bin/python ]; then
  "$PYTHON" -m venv .venv-kvpress
fi
pip() { .venv-kvpress/bin/python -m pip -q --disable-pip-version-check "$@"; }
pip install --upgrade pip
pip install "torch==2.13.0"  # the same torch as .venv
pip install "kvpress==0.5.5" "transformers>=4.56,<5.3"
.venv-kvpress/bin/python -c "import kvpress, transformers; print('kvpress ready, transformers', transformers.__version__)"
