"""Hold back the repaint of napari's window while the dock changes it, then repaint once.

Each repaint of napari's window is composed through OpenGL (the canvas is an OpenGL widget) and
sent to the display: 15-50 ms of wall-clock time on a software-rendered display, on top of the
work that caused it. The dock changes the window (adds a layer, fills a list, sets a status) on
one turn of the event loop and lets it repaint on a later turn, so no single turn pays for both.
Parts of the window that are slow to paint (napari's layer list draws an SVG icon per row and
button) can repaint on a turn of their own, after the rest of the window.
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
    parts
        Returns widgets of the window that repaint ``PART_MS`` after the rest of it.
    """

    #: Milliseconds between the window's repaint and that of the parts painted later.
    PART_MS = 30

    def __init__(
        self,
        host: Callable[[], QWidget | None],
        parts: Callable[[], list[QWidget]] | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.parts = parts or list
        self._holders: set[str] = set()
        self._window: QWidget | None = None
        self._held_parts: list[QWidget] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._release_now)
        self._parts_timer = QTimer(self)
        self._parts_timer.setSingleShot(True)
        self._parts_timer.setInterval(self.PART_MS)
        self._parts_timer.timeout.connect(self._release_parts)

    @property
    def active(self) -> bool:
        """The window's repaint (or that of some of its parts) is held back."""
        return self._window is not None or bool(self._held_parts)

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
        if window is None:
            return
        with contextlib.suppress(RuntimeError):  # the window was closed meanwhile
            # Held explicitly, a part stays held when its window is released.
            for part in self.parts():
                if part.window() is window and part not in self._held_parts:
                    part.setUpdatesEnabled(False)
                    self._held_parts.append(part)
            window.setUpdatesEnabled(True)
            if self._held_parts:
                self._parts_timer.start()

    def release_all(self) -> None:
        """Let the window and its parts repaint now, whoever holds them (the dock closes)."""
        self._holders.clear()
        with contextlib.suppress(RuntimeError):  # Qt deleted the timers or widgets already
            self._timer.stop()
            self._parts_timer.stop()
        with contextlib.suppress(RuntimeError):
            if self._window is not None:
                self._window.setUpdatesEnabled(True)
            for part in self._held_parts:
                part.setUpdatesEnabled(True)
        self._window, self._held_parts = None, []

    def _release_parts(self) -> None:
        if self._window is not None:  # held again meanwhile: released with the window
            self._parts_timer.start()
            return
        parts, self._held_parts = self._held_parts, []
        for part in parts:
            with contextlib.suppress(RuntimeError):
                part.setUpdatesEnabled(True)
