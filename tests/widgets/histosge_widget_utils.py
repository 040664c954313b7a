"""Helpers shared by the widget tests."""

from __future__ import annotations

import time

TIMEOUT_MS = 300_000


def wait_idle(qtbot, widget, timeout: int = TIMEOUT_MS) -> None:
    """Wait until the dock runs no step and has added its layers."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def worker_steps(controller, timeout: float = 600.0):
    """Return ``run(started)``: wait for the controller's worker step to end, without error."""
    session = controller.session

    def run(started: bool) -> None:
        assert started, session.status
        wait_for(controller.runner, lambda: session.running is None, timeout)
        assert session.last_error is None, session.last_error

    return run


def wait_for(runner, condition, timeout: float = 120.0) -> float:
    """Poll the runner (no event loop needed) until ``condition()``; return the seconds taken."""
    start = time.perf_counter()
    while not condition():
        runner.poll()
        time.sleep(0.01)
        assert time.perf_counter() - start < timeout, "timed out"
    return time.perf_counter() - start
