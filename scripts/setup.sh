#!/usr/bin/env bash
# Set up everything napari-histosge needs in ./.venv (idempotent).
#   bash scripts/setup.sh            # runtime + test dependencies
# System libraries for a headless Qt display (Xvfb) come from apt when running as root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. System libraries for napari under a virtual X display.
if [ -f scripts/apt-packages.txt ] && command -v apt-get >/dev/null 2>&1; then
    mapfile -t pkgs < <(grep -vE '^\s*(#|$)' scripts/apt-packages.txt)
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" = "0" ]; then
            log "installing system packages: ${missing[*]}"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            log "missing system packages (install them as root): ${missing[*]}"
        fi
    fi
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || { log "Python >= 3.10 is required"; exit 1; }

# 3. Python packages; skipped when pyproject.toml has not changed since the last install.
STAMP="$VENV/.histosge-installed"
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$VPY" -c 'import napari_histosge, torch, napari' 2>/dev/null; then
    log "installing Python packages (first run takes several minutes)"
    "$VPY" -m pip install -q --upgrade pip
    # The package declares version ranges; constraints.txt holds the exact tested pair
    # (torch/torchvision, taken from local wheels where present), applied to every install.
    "$VPY" -m pip install -q -c constraints.txt torch torchvision
    "$VPY" -m pip install -q -c constraints.txt -e ".[testing]"
    echo "$WANT" > "$STAMP"
else
    log "reusing $VENV"
fi

# 4. Byte-compile the package (as a wheel install does), so that its first import in napari
#    does not compile it on the event loop's time.
"$VPY" -m compileall -q src >/dev/null
