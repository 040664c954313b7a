"""bench/gpu_check.py runs end to end at its small size on the CPU (the GPU machine's command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_gpu_check_small_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--small", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln.split(" ", 1)[0] for ln in proc.stdout.splitlines()]
    assert lines == ["env", "tokens", "train", "superres", "summary"]
    result = json.loads(out.read_text())
    assert result["env"]["device"] == "cpu"
    assert result["tokens"]["tiles"] == 16
    assert result["tokens"]["dim"] == 64
    assert result["train"]["seconds"] > 0
    assert result["superres"]["units"] == 120


@pytest.mark.slow
def test_gpu_check_agreement_step_on_cpu():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    got = gpu_check.agreement_step("timm:test_vit", "cpu", 2)
    assert got["tokens_max_rel_diff"] == 0.0
    assert got["tokens_ok"]
    assert got["train_ok"]
