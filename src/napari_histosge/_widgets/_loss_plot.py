"""A small live plot of training and validation loss."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

__all__ = ["LossPlot"]


class LossPlot(FigureCanvasQTAgg):
    """Train and validation loss per epoch, redrawn at most every few epochs."""

    def __init__(self) -> None:
        fig = Figure(figsize=(3.2, 1.8), tight_layout=True)
        super().__init__(fig)
        self.setMinimumHeight(150)
        self.axes = fig.add_subplot(111)
        self.train: list[float] = []
        self.val: list[float] = []
        self.clear()

    def clear(self) -> None:
        """Forget the curves."""
        self.train, self.val = [], []
        self._redraw()

    def add(self, info: dict[str, Any]) -> None:
        """Add one epoch (``train_loss`` and ``val_loss``)."""
        self.train.append(float(info["train_loss"]))
        self.val.append(float(info["val_loss"]))
        if len(self.train) % 5 == 1:
            self._redraw()

    def _redraw(self) -> None:
        ax = self.axes
        ax.clear()
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("MSE", fontsize=7)
        ax.tick_params(labelsize=6)
        if self.train:
            ax.plot(self.train, label="train", color="#1f77b4")
            ax.plot(self.val, label="validation", color="#ff7f0e")
            ax.legend(fontsize=6)
        self.draw_idle()

    def finish(self) -> None:
        """Draw the final state."""
        self._redraw()
