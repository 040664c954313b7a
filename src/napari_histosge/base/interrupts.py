"""Ctrl-C during the few renames that swap a finished write into place, and fault injection.

:func:`deferred_interrupt` holds a Ctrl-C back until a short critical section (a swap of
folders or of store metadata) is over, so an interrupt never lands between two renames.
:func:`fault_point` names the points of those sections; when the environment variable
``HISTOSGE_FAULT_AT`` names one, the process signals itself there (``HISTOSGE_FAULT_SIGNAL``:
``KILL``, the default, or ``INT``), which is how the test-suite checks that a kill at any point
leaves the files whole.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["deferred_interrupt", "fault_point"]


def fault_point(name: str) -> None:
    """Signal this process when ``HISTOSGE_FAULT_AT`` equals ``name`` (a test hook)."""
    if os.environ.get("HISTOSGE_FAULT_AT") != name:
        return
    sig = os.environ.get("HISTOSGE_FAULT_SIGNAL", "KILL").upper()
    os.kill(os.getpid(), signal.SIGINT if sig == "INT" else signal.SIGKILL)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with Ctrl-C held back; a Ctrl-C received meanwhile is raised after it.

    Only the main thread can install signal handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
