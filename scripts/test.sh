#!/usr/bin/env bash
# Set up (idempotent) and run the full test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYTHONHASHSEED=0
# Two worker processes (pytest-xdist), one test file at a time each, so that a module's
# fixtures are built once; HISTOSGE_TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -n "${HISTOSGE_TEST_WORKERS:-2}" --dist loadfile "$@"
