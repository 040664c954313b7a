#!/usr/bin/env bash
# Set up (idempotent) and run the full test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYTHONHASHSEED=0
# One thread each for torch, BLAS and OpenMP: the test processes already keep both cores busy, and
# extra threads only spin (measured on 25 torch-heavy tests: 32.5 s of CPU instead of 38.6 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PYTEST=(.venv/bin/python -m pytest)
# Two worker processes (pytest-xdist), one test file at a time each, so that a module's
# fixtures are built once; HISTOSGE_TEST_WORKERS=0 runs everything in this process.
WORKERS=(-n "${HISTOSGE_TEST_WORKERS:-2}" --dist loadfile)
if [ "$#" -gt 0 ]; then
    exec "${PYTEST[@]}" "${WORKERS[@]}" "$@"
fi
# The dock's tests time napari's event loop against wall-clock limits. They run in one process at
# normal priority while the rest runs beside them on the workers at a lower priority (nice 10),
# so that the viewer's turns come first when both want a CPU, and the CPU time the dock's tests
# leave idle goes to the rest. The rest's report is printed after the dock's. (A job started with
# `&` in a script ignores Ctrl-C; `trap -` gives it back, as the Ctrl-C tests need it.)
REST_LOG="$(mktemp)"
trap 'rm -f "$REST_LOG"' EXIT
(
    trap - INT QUIT
    exec nice -n 10 "${PYTEST[@]}" "${WORKERS[@]}" --ignore=tests/widgets
) >"$REST_LOG" 2>&1 &
REST=$!
status=0
"${PYTEST[@]}" tests/widgets || status=$?
rest_status=0
wait "$REST" || rest_status=$?
printf '\n===== tests outside tests/widgets =====\n'
cat "$REST_LOG"
[ "$status" -ne 0 ] && exit "$status"
exit "$rest_status"
