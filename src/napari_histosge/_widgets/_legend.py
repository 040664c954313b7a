"""Colour bars of the shown maps, with their limits and units, painted in the dock.

One row per shown gene (and per map of standard deviations when those are shown): the gene,
its colormap over an H&E-like tint (so that the transparent low end reads as "the tissue shows
through"), and the contrast limits. Painting a few gradients costs the viewer well under a
millisecond; napari's own colour bar overlays cost a turn and a slow first draw per map.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

from ._session import Session

__all__ = ["MapLegend"]

#: What the transparent low end of a map is painted over: the H&E's pink, and the canvas's
#: black for the standard deviations (drawn next to the tissue).
TISSUE_TINT = "#e6cfe0"
CANVAS_TINT = "#000000"


class MapLegend(QWidget):
    """Colour bars of the session's shown maps, with their limits and units.

    Parameters
    ----------
    session
        Holds the shown maps and whether their standard deviations are shown.
    """

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.rows: list[tuple[str, dict[str, Any], float, float, str]] = []
        self.pitch_um: float | None = None
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Colour bars of the shown maps, over the H&E's tint: transparent at the low limit"
        )
        self._line = self.fontMetrics().lineSpacing() + 4
        session.changed.connect(self._on_changed)
        self._on_changed("maps")

    @property
    def units(self) -> str:
        """Units of the maps' values."""
        from napari_histosge._layers import MAP_UNITS

        return MAP_UNITS

    def _on_changed(self, name: str) -> None:
        if name not in ("maps", "show_uncertainty"):
            return
        from napari_histosge._layers import map_colormap

        maps = self.session.maps
        rows = []
        if maps is not None:
            n = len(maps.genes)
            for i, (gene, (lo, hi)) in enumerate(zip(maps.genes, maps.limits, strict=False)):
                rows.append((gene, map_colormap(i, n), lo, hi, TISSUE_TINT))
            if self.session.show_uncertainty:
                sd = map_colormap(kind="sd")
                for gene, (lo, hi) in zip(maps.genes, maps.sd_limits, strict=False):
                    rows.append((f"{gene} sd", sd, lo, hi, CANVAS_TINT))
        self.rows = rows
        self.pitch_um = None if maps is None else maps.pitch_um
        self.setFixedHeight((len(rows) + 1) * self._line if rows else 0)
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Paint one colour bar per row, then the units."""
        if not self.rows:
            return
        painter = QPainter(self)
        metrics = self.fontMetrics()
        name_w = max(metrics.horizontalAdvance(r[0]) for r in self.rows) + 8
        num_w = metrics.horizontalAdvance("-00.00") + 6
        bar_x, bar_w = name_w + num_w, max(40, self.width() - name_w - 2 * num_w)
        text = self.palette().windowText().color()
        for row, (name, cmap, lo, hi, tint) in enumerate(self.rows):
            y = row * self._line
            bar = QRectF(bar_x, y + 3, bar_w, self._line - 6)
            painter.setPen(text)
            painter.drawText(QRectF(0, y, name_w, self._line), Qt.AlignmentFlag.AlignVCenter, name)
            right = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight
            painter.drawText(QRectF(name_w, y, num_w - 4, self._line), right, f"{lo:.2f}")
            left = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
            painter.drawText(QRectF(bar_x + bar_w + 4, y, num_w, self._line), left, f"{hi:.2f}")
            painter.fillRect(bar, QColor(tint))
            gradient = QLinearGradient(bar.left(), 0, bar.right(), 0)
            for stop, rgba in zip(cmap["controls"], cmap["colors"], strict=True):
                gradient.setColorAt(float(stop), QColor.fromRgbF(*(float(c) for c in rgba)))
            painter.fillRect(bar, gradient)
        y = len(self.rows) * self._line
        painter.setPen(text)
        painter.drawText(
            QRectF(name_w, y, self.width() - name_w, self._line),
            Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
            self.units + (f"; map pixels of {self.pitch_um:.3g} µm" if self.pitch_um else ""),
        )
        painter.end()
