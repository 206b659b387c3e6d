#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install the package with its test tools.
# Idempotent: re-running only installs what changed. CPU-only: torch comes from requirements/cpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.installed-$(cat setup.cfg requirements/cpu.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements/cpu.txt
  rm -f .venv/.installed-* && touch "$stamp"
fi
