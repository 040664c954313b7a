"""A small live plot of training and validation loss, painted with Qt alone."""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]

TRAIN_COLOUR = (31, 119, 180)
VAL_COLOUR = (255, 127, 14)


class LossPlot(QWidget):
    """Train and validation loss per epoch, one pair of curves per ensemble member.

    Earlier ensemble members are drawn faded. Adding a point only schedules a repaint, so the
    plot follows every epoch without holding up napari's event loop.

    Parameters
    ----------
    parent
        Parent widget.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.train: list[float] = []
        self.val: list[float] = []
        self._series: dict[int, dict[str, list[float]]] = {}
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training (blue) and validation (orange) loss per epoch")

    def clear(self) -> None:
        """Forget the curves."""
        self.train, self.val = [], []
        self._series.clear()
        self.update()

    def add(self, info: dict[str, Any]) -> None:
        """Add one epoch from a training progress record.

        Parameters
        ----------
        info
            ``train_loss``, ``val_loss`` (may be ``None``), and optionally ``epoch`` and
            ``member``.
        """
        train = float(info["train_loss"])
        val = math.nan if info.get("val_loss") is None else float(info["val_loss"])
        self.train.append(train)
        self.val.append(val)
        series = self._series.setdefault(int(info.get("member", 0)), {"x": [], "t": [], "v": []})
        series["x"].append(float(info.get("epoch", len(series["x"]) + 1)))
        series["t"].append(train)
        series["v"].append(val)
        self.update()

    def finish(self) -> None:
        """Show the whole run (the plot always does)."""
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Draw axes, curves and a legend."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        rect = QRectF(self.rect()).adjusted(44, 8, -8, -22)
        painter.setPen(QPen(fg, 1))
        painter.drawRect(rect)
        values = [v for v in self.train + self.val if math.isfinite(v)]
        xs = [x for s in self._series.values() for x in s["x"]]
        if not values:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss per epoch")
            painter.end()
            return
        lo, hi = min(values), max(values)
        if hi <= lo:
            hi = lo + 1e-6
        pad = 0.06 * (hi - lo)  # keep the curves off the frame
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)

        def point(x: float, y: float) -> QPointF:
            px = rect.left() + (x - x0) / (x1 - x0) * rect.width()
            py = rect.bottom() - (y - lo + pad) / (hi - lo + 2 * pad) * rect.height()
            return QPointF(px, py)

        painter.drawText(
            QRectF(0, rect.top() - 6, 42, 14), Qt.AlignmentFlag.AlignRight, f"{hi:.3g}"
        )
        painter.drawText(
            QRectF(0, rect.bottom() - 8, 42, 14), Qt.AlignmentFlag.AlignRight, f"{lo:.3g}"
        )
        painter.drawText(
            QRectF(rect.left(), rect.bottom() + 3, rect.width(), 16),
            Qt.AlignmentFlag.AlignCenter,
            "epoch (MSE)" if len(self._series) < 2 else f"epoch (MSE, {len(self._series)} members)",
        )
        last = max(self._series)
        for member, series in sorted(self._series.items()):
            alpha = 255 if member == last else 80
            width = 2 if member == last else 1
            for key, colour in (("t", TRAIN_COLOUR), ("v", VAL_COLOUR)):
                path = QPainterPath()
                started = False
                for x, y in zip(series["x"], series[key], strict=True):
                    if not math.isfinite(y):
                        continue
                    if started:
                        path.lineTo(point(x, y))
                    else:
                        path.moveTo(point(x, y))
                        started = True
                painter.setPen(QPen(QColor(*colour, alpha), width))
                painter.drawPath(path)
        for i, (name, colour) in enumerate((("train", TRAIN_COLOUR), ("validation", VAL_COLOUR))):
            y = rect.top() + 12 + 14 * i
            painter.setPen(QPen(QColor(*colour), 2))
            painter.drawLine(QPointF(rect.right() - 88, y - 4), QPointF(rect.right() - 72, y - 4))
            painter.setPen(QPen(fg, 1))
            painter.drawText(QPointF(rect.right() - 68, y), name)
        painter.end()
