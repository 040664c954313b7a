"""6. Cells: segment the nuclei, show the cells coloured by a gene and a cell's values."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import PushButton
from qtpy.QtWidgets import QLabel

from ._controller import Controller
from ._section_base import Section

__all__ = ["CellsSection"]


class CellsSection(Section):
    """Press Segment cells; the cells are coloured by the first gene shown, and follow it.

    Parameters
    ----------
    controller
        Runs the segmentation and the recolouring in the worker.
    pitch_um
        Returns the maps' resolution (µm; ``None``: the fit's).
    """

    def __init__(self, controller: Controller, pitch_um: Any = lambda: None) -> None:
        super().__init__("6. Cells", controller)
        self.pitch_um = pitch_um
        self.segment_button = PushButton(text="Segment cells")
        self.add_form(self.segment_button)
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        self.add_widget(self.info_label)
        tip = "Segment the nuclei on the H&E and average the maps over each cell"
        self.gate("cells", self.segment_button, tip)
        self.segment_button.changed.connect(self.segment)
        self.session.changed.connect(self._on_changed)
        self.refresh()

    def shown_gene(self) -> str | None:
        """Return the first gene of the maps shown, or ``None``."""
        maps = self.session.maps
        return maps.genes[0] if maps is not None and maps.genes else None

    def segment(self, *_: Any) -> bool:
        """Segment the cells in the worker, coloured by the first gene shown."""
        return self.controller.cells(self.shown_gene(), self.pitch_um())

    def _on_changed(self, name: str) -> None:
        cells = self.session.cells
        if name == "maps" and cells is not None:
            gene = self.shown_gene()
            if gene is not None and gene != cells.gene:
                self.controller.colour_cells(gene)
        if name == "cells":
            text = "" if cells is None else f"{cells.n_cells} cells, coloured by {cells.gene}"
            self.info_label.setText(text)
