"""Helpers shared by the widget tests."""

from __future__ import annotations

TIMEOUT_MS = 120_000


def wait_idle(qtbot, widget, timeout: int = TIMEOUT_MS) -> None:
    """Wait until the dock has no running step."""
    qtbot.waitUntil(lambda: widget.running is None and widget.worker is None, timeout=timeout)
