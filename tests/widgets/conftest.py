"""Widget tests run in a real (virtual) X display.

napari's image layers need OpenGL, which Qt's offscreen platform does not give here; when no
display is set, an Xvfb server is started for the session. torch's optional triton backend
crashes when it loads after a Mesa GL context exists, so ``torch._dynamo`` (which imports it)
is imported before any viewer is created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

import torch._dynamo  # noqa: F401  - must load before any GL context (see module docstring)


def _start_xvfb() -> subprocess.Popen | None:
    if os.environ.get("DISPLAY") or shutil.which("Xvfb") is None:
        return None
    for number in range(90, 110):
        if os.path.exists(f"/tmp/.X11-unix/X{number}") or os.path.exists(f"/tmp/.X{number}-lock"):
            continue
        proc = subprocess.Popen(
            ["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            if os.path.exists(f"/tmp/.X11-unix/X{number}"):
                os.environ["DISPLAY"] = f":{number}"
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.kill()
    return None


_XVFB = _start_xvfb()
os.environ.pop("QT_QPA_PLATFORM", None) if os.environ.get("QT_QPA_PLATFORM") == "offscreen" else None


def pytest_sessionfinish(session, exitstatus):
    if _XVFB is not None:
        _XVFB.terminate()


@pytest.fixture
def sample_store(tmp_path):
    from napari_histosge.io import load_sample

    path = tmp_path / "sample.zarr"
    load_sample().write(path)
    return path
