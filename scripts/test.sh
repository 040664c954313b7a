#!/usr/bin/env bash
# Set up (idempotent) and run the full test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYTHONHASHSEED=0
PYTEST=(.venv/bin/python -m pytest)
# Two worker processes (pytest-xdist), one test file at a time each, so that a module's
# fixtures are built once; HISTOSGE_TEST_WORKERS=0 runs everything in this process. They use one
# thread each for torch, BLAS and OpenMP: the two already keep both cores busy, and more threads
# only spin (measured on 25 torch-heavy tests: 32.5 s of CPU instead of 38.6 s).
WORKERS=(-n "${HISTOSGE_TEST_WORKERS:-2}" --dist loadfile)
ONE_THREAD=(env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
if [ "$#" -gt 0 ]; then
    exec "${ONE_THREAD[@]}" "${PYTEST[@]}" "${WORKERS[@]}" "$@"
fi
# The dock's tests time napari's event loop against wall-clock limits: they run afterwards in
# one process, with the CPUs to themselves, instead of beside a worker busy with torch. (Run beside
# the rest at a lower priority, they failed there 1 time in 3 on this 2-core machine under load.)
"${ONE_THREAD[@]}" "${PYTEST[@]}" "${WORKERS[@]}" --ignore=tests/widgets
exec "${PYTEST[@]}" tests/widgets
