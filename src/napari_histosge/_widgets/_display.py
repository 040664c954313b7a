"""Start a virtual X display (Xvfb) for napari where no display is set. No Qt import."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

__all__ = ["start_virtual_display"]


def start_virtual_display(first: int = 90, last: int = 130) -> subprocess.Popen | None:
    """Start ``Xvfb`` on a free display number and set ``DISPLAY``.

    Returns the server process, or ``None`` when a display is already set or Xvfb is missing.

    Examples
    --------
    >>> proc = start_virtual_display()  # doctest: +SKIP
    """
    if os.environ.get("DISPLAY") or shutil.which("Xvfb") is None:
        return None
    for number in range(first, last):
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
        proc.wait()
    return None
