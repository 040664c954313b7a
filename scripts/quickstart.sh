#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the bundled sample: open napari with the sample,
# extract features, train, predict and show super-resolved gene maps over the tissue.
# Without a display it runs headless and prints where the exported store and a screenshot went.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/histosge demo --out "${HISTOSGE_DEMO_OUT:-$ROOT/out/demo}" "$@"
