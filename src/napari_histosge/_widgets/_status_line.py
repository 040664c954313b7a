"""The dock's status line: wrapped text of a fixed size that repaints only itself."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QGuiApplication, QPainter
from qtpy.QtWidgets import QMenu, QSizePolicy, QWidget

__all__ = ["StatusLine"]


class StatusLine(QWidget):
    """Up to ``lines`` lines of wrapped text; the full text is also its tooltip.

    A ``QLabel`` with word wrap asks its layout for a new height whenever its text changes, and
    the layouts up to napari's main window answer with repaints of their own: each new status
    repainted napari's window three to four times (each repaint is composed through OpenGL with
    the canvas). This widget has a fixed size, so a new text repaints it once and nothing else.
    Right-click offers to copy the text.

    Parameters
    ----------
    text
        The first text.
    lines
        Lines of text the widget is high.
    parent
        Parent widget.
    """

    def __init__(self, text: str = "", lines: int = 3, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(lines * self.fontMetrics().lineSpacing() + 4)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.setText(text)

    def text(self) -> str:
        """Return the text shown."""
        return self._text

    def setText(self, text: str) -> None:  # noqa: N802 - the Qt name, as QLabel has it
        """Show ``text``; nothing happens when it is the text already shown."""
        text = str(text)
        if text == self._text:
            return
        self._text = text
        self.setToolTip(text)
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setPen(self.palette().windowText().color())
        flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap
        rect = QRectF(self.rect().adjusted(2, 2, -2, -2))
        painter.drawText(rect, int(flags), self._text)
        painter.end()

    def _menu(self, pos: Any) -> None:
        menu = QMenu(self)
        menu.addAction("Copy", lambda: QGuiApplication.clipboard().setText(self._text))
        menu.exec(self.mapToGlobal(pos))
