#!/usr/bin/env bash
# Set up (idempotent) and run the full test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYTHONHASHSEED=0
exec .venv/bin/python -m pytest "$@"
