"""The gene list's model: gene names with their reliability, in variability or reliability order.

A flat list model over Python lists: setting tens of thousands of genes costs one reset, and
sorting by reliability reorders a list (no per-row Qt items). Rows show ``GENE  r² 0.41``;
``Qt.UserRole`` gives the gene name, which the search box filters on.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QAbstractListModel, QModelIndex, Qt

__all__ = ["GeneListModel"]

_DISPLAY = Qt.ItemDataRole.DisplayRole
_TOOLTIP = Qt.ItemDataRole.ToolTipRole
_GENE = Qt.ItemDataRole.UserRole


class GeneListModel(QAbstractListModel):
    """Genes in the order the worker ranked them, or sorted by reliability.

    ``reliability`` maps a gene to ``(r2, image_share)``: the leave-one-unit-out R² of its map
    and the share of the map's variance that the image carries.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ranked: list[str] = []
        self._shown: list[str] = []
        self._texts: dict[str, str] = {}
        self.reliability: dict[str, tuple[float, float]] = {}
        self.by_reliability = False

    def rowCount(self, parent: QModelIndex | None = None) -> int:  # noqa: N802 - Qt API
        """Return the number of genes (a flat list: none under a row)."""
        return 0 if parent is not None and parent.isValid() else len(self._shown)

    def data(self, index: QModelIndex, role: int = _DISPLAY) -> Any:
        """Return the row's text, its gene name (``Qt.UserRole``) or its tooltip."""
        if not index.isValid() or not 0 <= index.row() < len(self._shown):
            return None
        gene = self._shown[index.row()]
        if role == _GENE:
            return gene
        if role == _DISPLAY:
            return self._texts.get(gene, gene)
        if role == _TOOLTIP and gene in self.reliability:
            r2, share = self.reliability[gene]
            return (
                f"{gene}: the map explains {r2:.2f} of the measured units' variance when each "
                f"unit is left out (R²); the image carries {100 * share:.0f}% of the map's "
                "variance across superpixels, the rest comes from the measured units"
            )
        return None

    def setStringList(self, genes: list[str]) -> None:  # noqa: N802 - as QStringListModel
        """Show ``genes`` (ranked by the worker); reliabilities set before are kept."""
        self.set_genes(genes, self.reliability)

    def stringList(self) -> list[str]:  # noqa: N802 - as QStringListModel
        """Genes in the order shown."""
        return list(self._shown)

    def set_genes(self, genes: list[str], reliability: dict[str, tuple[float, float]]) -> None:
        """Show ``genes`` with their reliability (``{}``: none known)."""
        self.beginResetModel()
        self._ranked = list(genes)
        self.reliability = dict(reliability)
        self._texts = {
            g: f"{g}   r² {r2:.2f}" for g, (r2, _) in self.reliability.items() if math.isfinite(r2)
        }
        self._shown = self._order()
        self.endResetModel()

    def sort_by_reliability(self, on: bool) -> None:
        """Most reliable first (genes without a score last), or back to the ranked order."""
        if bool(on) == self.by_reliability:
            return
        self.beginResetModel()
        self.by_reliability = bool(on)
        self._shown = self._order()
        self.endResetModel()

    def _order(self) -> list[str]:
        if not self.by_reliability or not self.reliability:
            return list(self._ranked)

        def key(gene: str) -> float:
            r2 = self.reliability.get(gene, (math.nan, 0.0))[0]
            return -r2 if math.isfinite(r2) else math.inf

        return sorted(self._ranked, key=key)
