#!/usr/bin/env bash
# Creates (or reuses) .venv in the repo root and installs the project with every extra.
# Re-running is cheap: pip sees the pinned versions already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The filter only hides a warning about this machine's pip index; pipefail keeps pip's own exit status, so a
  # failed install (a full disk, a missing wheel) stops here instead of leaving a half-built .venv to the tests.
  if ! .venv/bin/python -m pip install -q -e ".[seqio,hf,beam,test,tpu]" --config-settings editable_mode=compat 2>&1 \
      | { grep -v "is ignored: it is neither" || true; }; then
    echo "error: installing the project into .venv failed (pip's message is above; the venv needs about 6 GB," \
      "and $(df -h --output=avail . | tail -1 | tr -d ' ') is free here)" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
