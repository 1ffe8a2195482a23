#!/usr/bin/env bash
# Set-up + the demo (see launch/demo.py). Extra arguments go to the demo, e.g. --text_files my.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m launch.demo "$@"
