#!/usr/bin/env bash
# The whole test suite on CPU with 8 fake devices (tests/conftest.py sets XLA_FLAGS before jax loads),
# in two processes that take whole files, the longest first (tests/conftest.py: LONGEST_FIRST).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
