"""4. Predict and explore: predict, search and pick genes, render them at a resolution."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, FloatSpinBox, PushButton
from qtpy.QtCore import QItemSelectionModel, QSortFilterProxyModel, Qt, QTimer
from qtpy.QtWidgets import QAbstractItemView, QLabel, QLineEdit, QListView

from ._controller import Controller
from ._gene_list import GeneListModel
from ._legend import MapLegend
from ._section_base import Section

__all__ = ["PredictSection"]

#: Milliseconds to wait after the gene selection changes before re-rendering shown maps.
RENDER_DELAY_MS = 150


class PredictSection(Section):
    """Predict, then choose genes and a map resolution and press Render."""

    def __init__(self, controller: Controller, viewer: Any = None) -> None:
        super().__init__("4. Predict and explore", controller)
        self.predict_button = PushButton(text="Predict")
        self.resolution_spin = FloatSpinBox(
            label="Map resolution (µm)", min=0.0, max=1000.0, step=0.5, value=0.0
        )
        self.resolution_spin.native.setSpecialValueText("auto")
        self.resolution_spin.tooltip = (
            "Size of one map pixel in µm. auto: superres, 8 µm or a quarter of the spot "
            "diameter; trained models, a quarter of the distance between positions"
        )
        self.add_form(self.predict_button, self.resolution_spin)
        self.gene_filter = QLineEdit()
        self.gene_filter.setPlaceholderText("search genes")
        self.gene_filter.setClearButtonEnabled(True)
        self.gene_model = GeneListModel()
        self.gene_proxy = QSortFilterProxyModel()
        self.gene_proxy.setSourceModel(self.gene_model)
        self.gene_proxy.setFilterRole(Qt.ItemDataRole.UserRole)  # the gene's name only
        self.gene_proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.gene_filter.textChanged.connect(self.gene_proxy.setFilterFixedString)
        self.gene_list = QListView()
        self.gene_list.setModel(self.gene_proxy)
        self.gene_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.gene_list.setUniformItemSizes(True)
        self.gene_list.setMinimumHeight(120)
        self.gene_list.setToolTip("Most variable predictions first; Ctrl/Shift-click for several")
        self.gene_list.selectionModel().selectionChanged.connect(self._on_gene_selection)
        self.gene_list.doubleClicked.connect(lambda _index: self.render())
        self.add_widget(self.gene_filter)
        self.sort_check = CheckBox(text="Most reliable first (r²: leave-one-unit-out)")
        self.sort_check.tooltip = "Order the genes by how well each map predicts left-out units"
        self.sort_check.changed.connect(self._on_sort_toggled)
        self.show_state(self.sort_check, False, self._sort_tip(False))
        self.add_form(self.sort_check)
        self.add_widget(self.gene_list)
        self.measured_check = CheckBox(text="Show measured expression at spots")
        self.measured_check.tooltip = "The first chosen gene's measured values, as spot colours"
        self.sd_check = CheckBox(text="Show uncertainty (sd) next to the maps")
        self.sd_check.tooltip = (
            "Each map's standard deviation (superres model), drawn to the right of the tissue"
        )
        self.units_check = CheckBox(text="Outline the measured units")
        self.units_check.tooltip = "The spots as outlines over the maps"
        self.render_button = PushButton(text="Render")
        self.add_form(self.measured_check, self.sd_check, self.units_check, self.render_button)
        self.legend = MapLegend(self.session)
        self.add_widget(self.legend)
        self.sd_check.changed.connect(lambda on: self.session.set_shown(uncertainty=on))
        self.units_check.changed.connect(lambda on: self.session.set_shown(units=on))
        # Value ± sd under the mouse, read from the shown maps' files.
        self.readout_label = QLabel("")
        self.readout_label.setToolTip("The shown maps' values (± sd) under the mouse")
        self.readout_label.setWordWrap(True)
        self.readout_label.setFixedHeight(2 * self.readout_label.fontMetrics().lineSpacing() + 4)
        self.add_widget(self.readout_label)
        self.readout = None
        if viewer is not None:
            from ._readout import ValueReadout

            readout = self.readout = ValueReadout(viewer, self.session, self.readout_label)
            # The viewer outlives the dock: stop reading its mouse when the label goes.
            self.readout_label.destroyed.connect(lambda *_: readout.close())
        self.gate("predict", self.predict_button, "Predict at the spots and the new positions")
        self.gate("render", self.render_button, "Show the selected genes over the tissue")
        self.predict_button.changed.connect(self.predict)
        self.render_button.changed.connect(self.render)
        self.measured_check.changed.connect(self._on_measured_toggled)
        self.render_timer = QTimer(self)
        self.render_timer.setSingleShot(True)
        self.render_timer.setInterval(RENDER_DELAY_MS)
        self.render_timer.timeout.connect(self.render)
        self.options: Any = lambda: {}
        self.session.changed.connect(self._on_changed)
        self.refresh()

    @property
    def pitch_um(self) -> float | None:
        """The map resolution in µm; ``None`` for automatic."""
        value = float(self.resolution_spin.value)
        return value if value > 0 else None

    def predict(self, *_: Any) -> bool:
        """Predict in the worker (a loaded model extracts what it needs with its own encoder)."""
        try:
            options = self.options()
        except ValueError as err:
            self.session.fail(str(err))
            return False
        return self.controller.predict(options)

    def _on_changed(self, name: str) -> None:
        if name == "predictions":
            preds = self.session.predictions
            reliability = {} if preds is None else preds.reliability
            self.gene_model.set_genes([] if preds is None else list(preds.genes), reliability)
            self.show_state(self.sort_check, bool(reliability), self._sort_tip(bool(reliability)))
            if preds is not None and preds.genes:
                self.gene_list.setCurrentIndex(self.gene_proxy.index(0, 0))

    def selected_genes(self) -> list[str]:
        """Genes selected in the list, in list order."""
        rows = sorted(self.gene_list.selectionModel().selectedIndexes(), key=lambda i: i.row())
        return [str(self.gene_proxy.data(i, Qt.ItemDataRole.UserRole)) for i in rows]

    def select_genes(self, genes: list[str]) -> None:
        """Select ``genes`` in the list (clearing the filter)."""
        self.gene_filter.clear()
        selection = self.gene_list.selectionModel()
        selection.clearSelection()
        rows = {g: i for i, g in enumerate(self.gene_model.stringList())}
        indices = [
            self.gene_proxy.mapFromSource(self.gene_model.index(rows[gene], 0))
            for gene in genes
            if gene in rows
        ]
        for index in indices:
            selection.select(index, QItemSelectionModel.SelectionFlag.Select)
        if indices:
            self.gene_list.scrollTo(indices[0])

    @staticmethod
    def _sort_tip(known: bool) -> str:
        if known:
            return "Order the genes by how well each map predicts left-out units"
        return "Reliability comes with the super-resolution model's predictions."

    def _on_sort_toggled(self, on: bool) -> None:
        selected = self.selected_genes()
        self.gene_model.sort_by_reliability(on)
        if selected:
            self.select_genes(selected)  # and scrolls to the first
            self.render_timer.stop()  # the same genes as before: nothing to render
        else:
            self.gene_list.scrollToTop()

    def _on_gene_selection(self, *_: Any) -> None:
        # Once maps are shown, choosing other genes re-renders them (no model run).
        # Reordering the list keeps the same genes selected: nothing to render.
        maps = self.session.maps
        if (
            maps is not None
            and self.session.predictions is not None
            and set(self.selected_genes()) != set(maps.genes)
        ):
            self.render_timer.start()

    def render(self, *_: Any) -> bool:
        """Rasterise the selected genes in the worker and show them over the tissue."""
        self.render_timer.stop()
        if self.session.running is not None:
            return False
        return self.controller.render(
            self.selected_genes(), self.pitch_um, measured=bool(self.measured_check.value)
        )

    def _on_measured_toggled(self, checked: bool) -> None:
        if not checked:
            self.controller.show_measured(None)
        elif self.session.maps is not None:
            self.controller.show_measured(self.session.maps.genes[0])
