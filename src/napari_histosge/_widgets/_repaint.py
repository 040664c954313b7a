"""Hold back the repaint of napari's window while the dock changes it, then repaint once.

Each repaint of napari's window is composed through OpenGL (the canvas is an OpenGL widget) and
sent to the display: 15-50 ms of wall-clock time on a software-rendered display, on top of the
work that caused it. The dock changes the window (adds a layer, fills a list, sets a status) on
one turn of the event loop and lets it repaint on a later turn, so no single turn pays for both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QWidget

__all__ = ["RepaintHold"]


class RepaintHold(QObject):
    """Disables updates of the window of ``host()`` while anyone holds it.

    Parameters
    ----------
    host
        Returns a widget inside the window (the dock), or ``None`` when there is none.
    """

    def __init__(self, host: Callable[[], QWidget | None]) -> None:
        super().__init__()
        self.host = host
        self._holders: set[str] = set()
        self._window: QWidget | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._release_now)

    @property
    def active(self) -> bool:
        """The window's repaint is held back."""
        return self._window is not None

    def hold(self, who: str) -> None:
        """Hold the window's repaint for ``who``."""
        self._holders.add(who)
        self._timer.stop()
        if self._window is not None:
            return
        host = self.host()
        window = None if host is None else host.window()
        if window is not None and window is not host and window.updatesEnabled():
            window.setUpdatesEnabled(False)
            self._window = window

    def release(self, who: str, delay_ms: int) -> None:
        """Stop holding for ``who``; the window repaints ``delay_ms`` later if nobody holds it."""
        self._holders.discard(who)
        if not self._holders and self._window is not None:
            self._timer.start(delay_ms)

    def _release_now(self) -> None:
        if self._holders:
            return
        window, self._window = self._window, None
        if window is not None:
            with contextlib.suppress(RuntimeError):  # the window was closed meanwhile
                window.setUpdatesEnabled(True)
