"""Helpers shared by the widget tests."""

from __future__ import annotations

TIMEOUT_MS = 300_000


def wait_idle(qtbot, widget, timeout: int = TIMEOUT_MS) -> None:
    """Wait until the dock runs no step and has added its layers."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
