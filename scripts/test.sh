#!/usr/bin/env bash
# Set up (idempotent) and run the full test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYTHONHASHSEED=0
PYTEST=(.venv/bin/python -m pytest)
# Two worker processes (pytest-xdist), one test file at a time each, so that a module's
# fixtures are built once; HISTOSGE_TEST_WORKERS=0 runs everything in this process.
WORKERS=(-n "${HISTOSGE_TEST_WORKERS:-2}" --dist loadfile)
if [ "$#" -gt 0 ]; then
    exec "${PYTEST[@]}" "${WORKERS[@]}" "$@"
fi
# The dock's tests time napari's event loop against wall-clock limits: they run afterwards in
# one process, with the CPUs to themselves, instead of beside a worker busy with torch.
"${PYTEST[@]}" "${WORKERS[@]}" --ignore=tests/widgets
exec "${PYTEST[@]}" tests/widgets
