"""Predictions at the measured spots and the super-resolution positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FULL_SIZE_KINDS", "Predictions"]

#: Kinds of spot-sized positions: the slide's spots, and the square lattice laid over the
#: tissue of a section that has an image only (``sections.open_for_prediction``).
FULL_SIZE_KINDS = ("spot", "lattice")


@dataclass
class Predictions:
    """Predicted expression at measured spots and at super-resolution positions.

    Parameters
    ----------
    genes
        Gene names, one per column of ``values``.
    positions_px
        ``(m, 2)`` positions ``(x, y)`` in the H&E's scale-0 pixels: the measured spots first,
        then the new positions.
    values
        ``(m, g)`` predictions in the target space (log1p of counts normalised to 1e4).
    kind
        ``(m,)`` ``"spot"`` for the slide's spots (its circles), ``"lattice"`` for the
        spot-sized lattice laid over an image-only section, otherwise the set of new positions
        (``"4x"``, ``"grid<µm>um"``).
    ids
        ``(m,)`` position ids: the spot (or lattice) ids first, ``"<kind>_<i>"`` for new ones.
    spot_diameter_px
        Diameter of a measured spot in H&E pixels.
    meta
        Training configuration, metrics and feature provenance, JSON-serialisable.
    gene_info
        Per-gene columns for the table's ``var`` (for example each gene's reliability).
    """

    genes: list[str]
    positions_px: np.ndarray
    values: np.ndarray
    kind: np.ndarray
    ids: np.ndarray
    spot_diameter_px: float
    meta: dict[str, Any] = field(default_factory=dict)
    gene_info: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def is_spot(self) -> np.ndarray:
        """Boolean mask of the slide's spots (``kind == "spot"``)."""
        return np.asarray(self.kind) == "spot"

    @property
    def is_full_size(self) -> np.ndarray:
        """Boolean mask of the spot-sized positions: the spots, or a section's tissue lattice."""
        return np.isin(np.asarray(self.kind), FULL_SIZE_KINDS)

    @property
    def spot_px(self) -> np.ndarray:
        """Positions of the measured spots."""
        return self.positions_px[self.is_spot]

    @property
    def spot_values(self) -> np.ndarray:
        """Predictions at the measured spots."""
        return self.values[self.is_spot]

    def top_genes(self, n: int = 2, *, distinct: bool = False) -> list[str]:
        """Return the ``n`` genes whose predictions vary most over the positions.

        With ``distinct``, each next gene is the most variable one whose pattern correlates
        less than 0.3 (absolute) with the genes already chosen, when there is one.

        Examples
        --------
        >>> p = Predictions(["a", "b"], np.zeros((2, 2)), np.array([[0.0, 0.0], [0.0, 3.0]]),
        ...                 np.array(["spot", "4x"]), np.array(["s0", "p0"]), 10.0)
        >>> p.top_genes(1)
        ['b']
        """
        vals = np.asarray(self.values, dtype=float)
        var = np.nan_to_num(vals.var(axis=0))
        order = np.argsort(-var, kind="stable")
        if not distinct:
            return [self.genes[i] for i in order[:n]]
        chosen = [int(order[0])]
        with np.errstate(invalid="ignore", divide="ignore"):
            for i in order[1:]:
                if len(chosen) >= n:
                    break
                r = [abs(np.nan_to_num(np.corrcoef(vals[:, i], vals[:, j])[0, 1])) for j in chosen]
                if max(r) < 0.3:
                    chosen.append(int(i))
        chosen += [int(i) for i in order if int(i) not in chosen][: n - len(chosen)]
        return [self.genes[i] for i in chosen]

    def gene_index(self, genes: Sequence[str]) -> np.ndarray:
        """Column indices of ``genes``; raises ``KeyError`` naming unknown genes.

        Examples
        --------
        >>> p = Predictions(["a", "b"], np.zeros((1, 2)), np.zeros((1, 2)),
        ...                 np.array(["spot"]), np.array(["s0"]), 10.0)
        >>> p.gene_index(["b"]).tolist()
        [1]
        """
        lookup = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in lookup]
        if missing:
            raise KeyError(
                f"Expected genes among the {len(self.genes)} predicted genes, "
                f"found unknown `{missing[:5]}`."
            )
        return np.array([lookup[g] for g in genes], dtype=int)
