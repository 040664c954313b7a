"""Value ± standard deviation of the shown maps under the mouse (domain, cell), in the dock.

The maps and their standard deviations are the worker's memory-mapped ``.npy`` files; a mouse
move reads one value of each (no computation) and the label changes at most every
``SHOW_MS``, so hovering costs the viewer next to nothing.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QObject, QTimer

from ._session import MapsInfo, Session
from ._trust_layers import SIDE_GAP

__all__ = ["ValueReadout"]

#: The label changes at most this often (milliseconds).
SHOW_MS = 150


class ValueReadout(QObject):
    """Shows each shown gene's value (± sd) at the mouse in ``label``.

    Over the maps: every shown gene; over a gene's map of standard deviations (next to the
    maps): that gene.

    Parameters
    ----------
    viewer
        The viewer whose mouse moves are read.
    session
        Holds the shown maps.
    label
        Gets the text (``setText``).
    """

    def __init__(self, viewer: Any, session: Session, label: Any) -> None:
        super().__init__()
        self.viewer, self.session, self.label = viewer, session, label
        self.text = ""
        self._maps: MapsInfo | None = None
        self._arrays: tuple[Any, Any] = (None, None)
        self._domains: tuple[Any, Any] | None = None
        self._cells: tuple[Any, ...] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SHOW_MS)
        self._timer.timeout.connect(self._show)
        viewer.mouse_move_callbacks.append(self.on_move)

    def close(self) -> None:
        """Stop reading the mouse."""
        self.label = None
        if self.on_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self.on_move)

    def _open(self, maps: MapsInfo | None) -> None:
        import numpy as np

        self._maps = maps
        if maps is None or not maps.shape[0]:
            self._arrays = (None, None)
            return
        values = np.load(maps.path, mmap_mode="r")
        sd = np.load(maps.sd_levels[0], mmap_mode="r") if maps.sd_levels else None
        self._arrays = (values, sd)

    def on_move(self, viewer: Any, event: Any) -> None:
        """Read the values under the mouse (a mouse-move callback of napari)."""
        text = self.read(tuple(event.position)[-2:])
        if text != self.text:
            self.text = text
            if not self._timer.isActive():
                self._timer.start()

    def read(self, yx: tuple[float, float]) -> str:
        """Return the text for world position ``(y, x)`` (empty off the maps, domains, cells)."""
        values = self._values(yx)
        domain = self._domain(yx)
        cell = self._cell(yx)
        return "; ".join(part for part in (values, domain, cell) if part)

    def _cell(self, yx: tuple[float, float]) -> str:
        import numpy as np

        cells = self.session.cells
        if cells is None:
            return ""
        if self._cells is None or self._cells[0] is not cells:
            labels, values = (np.load(p, mmap_mode="r") for p in (cells.labels, cells.values))
            self._cells = (cells, labels, values, {g: i for i, g in enumerate(cells.genes)})
        _, labels, values, index = self._cells
        row = round((yx[0] - cells.translate[0]) / cells.scale[0])
        col = round((yx[1] - cells.translate[1]) / cells.scale[1])
        if not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
            return ""
        cell = int(labels[row, col])
        if cell <= 0:
            return ""
        maps = self.session.maps
        genes = list(maps.genes) if maps is not None else [cells.gene]
        parts = [f"{g} {float(values[cell - 1, index[g]]):.2f}" for g in genes if g in index]
        return f"cell {cell}: {', '.join(parts)}" if parts else f"cell {cell}"

    def _domain(self, yx: tuple[float, float]) -> str:
        import numpy as np

        domains = self.session.domains
        if domains is None:
            return ""
        if self._domains is None or self._domains[0] is not domains:
            self._domains = (domains, np.load(domains.path, mmap_mode="r"))
        labels = self._domains[1]
        row = round((yx[0] - domains.translate[0]) / domains.scale[0])
        col = round((yx[1] - domains.translate[1]) / domains.scale[1])
        if not (0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]):
            return ""
        label = int(labels[row, col])
        return f"domain {label}" if label > 0 else ""

    def _values(self, yx: tuple[float, float]) -> str:
        if self.session.maps is not self._maps:
            self._open(self.session.maps)
        maps, (values, sd) = self._maps, self._arrays
        if maps is None or values is None:
            return ""
        (y, x), (sy, sx), (ty, tx) = yx, maps.scale, maps.translate
        h, w = maps.shape
        panel = max(0, math.floor((x - tx + 0.5 * sx) / (w * sx * (1.0 + SIDE_GAP))))
        row = round((y - ty) / sy)
        col = round((x - tx - panel * w * sx * (1.0 + SIDE_GAP)) / sx)
        panels = len(maps.genes) if sd is not None and self.session.show_uncertainty else 0
        if not (0 <= row < h and 0 <= col < w) or panel > panels:
            return ""
        shown = range(len(maps.genes)) if panel == 0 else [panel - 1]
        parts = []
        for g in shown:
            value = float(values[g, row, col])
            if not math.isfinite(value):
                continue
            spread = float(sd[g, row, col]) if sd is not None else math.nan
            pm = f" ± {spread:.2f}" if math.isfinite(spread) else ""
            parts.append(f"{maps.genes[g]} {value:.2f}{pm}")
        return f"{', '.join(parts)} (log1p normalised counts)" if parts else ""

    def _show(self) -> None:
        if self.label is not None and self.label.text() != self.text:
            self.label.setText(self.text)
