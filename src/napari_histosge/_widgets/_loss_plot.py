"""A small live plot of training and validation loss."""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["LossPlot"]

TRAIN_COLOUR = (31, 119, 180)
VAL_COLOUR = (255, 127, 14)


class LossPlot(QWidget):
    """Train and validation loss per epoch, one pair of curves per ensemble member.

    pyqtgraph redraws a curve in well under a millisecond, so the plot follows every epoch
    without holding up napari's event loop. Earlier ensemble members are drawn faded.

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
        self._curves: dict[int, tuple[Any, Any]] = {}
        self.plot_widget = pg.PlotWidget(background=None)
        self.plot_widget.setMinimumHeight(160)
        self.plot_widget.setLabel("bottom", "epoch")
        self.plot_widget.setLabel("left", "MSE")
        self.plot_widget.getAxis("left").enableAutoSIPrefix(False)
        self.plot_widget.showGrid(x=True, y=True, alpha=0.2)
        self.plot_widget.setMouseEnabled(x=False, y=False)
        self.legend = self.plot_widget.addLegend(offset=(-5, 5))
        self.legend.setLabelTextSize("7pt")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

    def clear(self) -> None:
        """Forget the curves."""
        self.train, self.val = [], []
        self._series.clear()
        for train_curve, val_curve in self._curves.values():
            self.plot_widget.removeItem(train_curve)
            self.plot_widget.removeItem(val_curve)
        self._curves.clear()
        self.legend.clear()

    def add(self, info: dict[str, Any]) -> None:
        """Add one epoch from a training progress record.

        Parameters
        ----------
        info
            ``train_loss``, ``val_loss`` (may be ``None``), and optionally ``epoch`` and
            ``member``.
        """
        train = float(info["train_loss"])
        val = float("nan") if info.get("val_loss") is None else float(info["val_loss"])
        self.train.append(train)
        self.val.append(val)
        member = int(info.get("member", 0))
        series = self._series.get(member)
        if series is None:
            series = self._series[member] = {"epoch": [], "train": [], "val_epoch": [], "val": []}
            self._new_member(member)
        epoch = float(info.get("epoch", len(series["epoch"]) + 1))
        series["epoch"].append(epoch)
        series["train"].append(train)
        if val == val:  # not NaN
            series["val_epoch"].append(epoch)
            series["val"].append(val)
        train_curve, val_curve = self._curves[member]
        train_curve.setData(series["epoch"], series["train"])
        val_curve.setData(series["val_epoch"], series["val"])

    def finish(self) -> None:
        """Show the whole run."""
        self.plot_widget.enableAutoRange()

    def _new_member(self, member: int) -> None:
        for train_curve, val_curve in self._curves.values():
            train_curve.setPen(pg.mkPen((*TRAIN_COLOUR, 80), width=1))
            val_curve.setPen(pg.mkPen((*VAL_COLOUR, 80), width=1))
        first = not self._curves
        train_curve = self.plot_widget.plot(
            [], [], pen=pg.mkPen(TRAIN_COLOUR, width=2), name="train" if first else None
        )
        val_curve = self.plot_widget.plot(
            [], [], pen=pg.mkPen(VAL_COLOUR, width=2), name="validation" if first else None
        )
        self._curves[member] = (train_curve, val_curve)
