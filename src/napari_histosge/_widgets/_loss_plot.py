"""A small live plot of training and validation loss."""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """Train and validation loss per epoch.

    pyqtgraph redraws a curve in well under a millisecond, so the plot follows every epoch
    without ever holding up napari's event loop.

    Parameters
    ----------
    parent
        Parent widget.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.train: list[float] = []
        self.val: list[float] = []
        self.plot_widget = pg.PlotWidget(background=None)
        self.plot_widget.setMinimumHeight(150)
        self.plot_widget.setLabel("bottom", "epoch")
        self.plot_widget.setLabel("left", "MSE")
        self.plot_widget.showGrid(x=True, y=True, alpha=0.2)
        legend = self.plot_widget.addLegend(offset=(-5, 5))
        legend.setLabelTextSize("7pt")
        self.train_curve = self.plot_widget.plot(
            [], [], pen=pg.mkPen("#1f77b4", width=2), name="train"
        )
        self.val_curve = self.plot_widget.plot(
            [], [], pen=pg.mkPen("#ff7f0e", width=2), name="validation"
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

    def clear(self) -> None:
        """Forget the curves."""
        self.train, self.val = [], []
        self._redraw()

    def add(self, info: dict[str, Any]) -> None:
        """Add one epoch from a training progress record (``train_loss`` and ``val_loss``)."""
        self.train.append(float(info["train_loss"]))
        val = info.get("val_loss")
        self.val.append(float("nan") if val is None else float(val))
        self._redraw()

    def finish(self) -> None:
        """Draw the final state."""
        self._redraw()

    def _redraw(self) -> None:
        steps = list(range(1, len(self.train) + 1))
        self.train_curve.setData(steps, self.train)
        finite = [(s, v) for s, v in zip(steps, self.val, strict=True) if v == v]
        self.val_curve.setData([s for s, _ in finite], [v for _, v in finite])
