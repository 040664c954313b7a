"""5. Domains: cluster the super-resolved expression into tissue domains, with their top genes."""

from __future__ import annotations

import html
from typing import Any

from magicgui.widgets import PushButton, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

from ._controller import Controller
from ._section_base import Section

__all__ = ["DomainsSection"]

#: Default number of domains.
DEFAULT_K = 6
#: Top genes listed per domain.
TOP_GENES_SHOWN = 5


class DomainsSection(Section):
    """Choose a number of domains and press Find domains; each domain's top genes are listed."""

    def __init__(self, controller: Controller) -> None:
        super().__init__("5. Domains", controller)
        self.k_spin = SpinBox(label="Domains", min=2, max=30, value=DEFAULT_K)
        self.k_spin.tooltip = "Number of tissue domains (clusters of the superpixels' expression)"
        self.find_button = PushButton(text="Find domains")
        self.add_form(self.k_spin, self.find_button)
        self.top_label = QLabel("")
        self.top_label.setTextFormat(Qt.TextFormat.RichText)
        self.top_label.setWordWrap(True)
        self.top_label.setToolTip("Each domain's most specific genes, in the layer's colours")
        self.add_widget(self.top_label)
        self.gate("domains", self.find_button, "Cluster the map's superpixels into domains")
        self.find_button.changed.connect(self.find)
        self.seed: Any = lambda: 0
        self.pitch_um: Any = lambda: None  # the map resolution (µm; None: the fit's)
        self.session.changed.connect(self._on_changed)
        self.refresh()

    def find(self, *_: Any) -> bool:
        """Find ``k`` domains in the worker and show them as a labels layer."""
        return self.controller.domains(int(self.k_spin.value), int(self.seed()), self.pitch_um())

    def _on_changed(self, name: str) -> None:
        if name == "domains":
            self.top_label.setText(self.describe())

    def describe(self) -> str:
        """Each domain's colour swatch and top genes, as rich text (empty without domains)."""
        from napari_histosge._layers import domain_colors

        domains = self.session.domains
        if domains is None:
            return ""
        colors = domain_colors(domains.k)
        rows = []
        for d in range(1, domains.k + 1):
            genes = ", ".join(
                html.escape(g) for g in domains.top_genes.get(d, [])[:TOP_GENES_SHOWN]
            )
            rows.append(f'<span style="color:{colors[d]}">■</span> {d}: {genes or "—"}')
        return "<br>".join(rows)
