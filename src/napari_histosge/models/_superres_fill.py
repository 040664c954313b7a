"""Fill superpixels under no footprint with a smooth, edge-continuous blend of corrections.

The exact projection of :mod:`.superres` shifts every footprint by its unit's mismatch; the
superpixels between footprints (gaps between spots, tissue margins) take the corrections of
nearby units instead: first Shepard weights of the nearest units by the distance to their
edges, then a few Jacobi sweeps of the grid Laplacian with the footprints' corrections held
fixed, so that the fill is continuous at the footprints' edges and smooth in the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OutsideFill", "outside_fill"]


@dataclass
class OutsideFill:
    """The fill as one sparse operator from unit mismatches (see :func:`outside_fill`)."""

    off: np.ndarray  # indices of the superpixels under no footprint
    operator: Any  # (off, units) CSR

    def apply(self, mismatch: np.ndarray) -> np.ndarray:
        """Return the corrections ``(off, genes)`` for the units' ``mismatch``."""
        return np.asarray(self.operator @ mismatch)


def outside_fill(
    pos: np.ndarray, a: Any, centroids: np.ndarray, pitch: float, sweeps: int = 20
) -> OutsideFill | None:
    """Build the fill for superpixels at ``pos`` with footprints ``a`` (units x superpixels).

    The footprints' own corrections are the least-norm ones (a uniform shift per unit when
    footprints do not overlap; with overlaps, the Jacobi sweeps are skipped). The sweeps are
    applied once to the operator (entries below 1e-4 dropped), not to every gene.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> pos = np.c_[np.arange(5.0), np.zeros(5)]
    >>> a = sp.csr_matrix(np.array([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]]))
    >>> fill = outside_fill(pos, a, np.array([[0.0, 0], [4.0, 0]]), 4.0, sweeps=200)
    >>> fill.apply(np.array([[0.0], [3.0]])).round(2).ravel()
    array([0.75, 1.5 , 2.25])
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    from napari_histosge.geometry.lattice import lattice_pitch

    a = sp.csr_matrix(a)
    off = np.flatnonzero(np.diff(sp.csc_matrix(a).indptr) == 0)
    if not len(off):
        return None
    spacing = lattice_pitch(pos, max_queries=20000)  # the superpixel grid's step
    radius = np.sqrt(np.diff(a.indptr) * spacing**2 / np.pi)
    k = min(6, len(centroids))
    dist, idx = cKDTree(centroids).query(pos[off], k=k)
    dist = dist.reshape(len(off), k)
    idx = idx.reshape(len(off), k)
    edge = np.maximum(dist - radius[idx], 0.0)
    w = 1.0 / (edge**2 + (0.05 * pitch) ** 2)
    w /= w.sum(1, keepdims=True)
    rows = np.repeat(np.arange(len(off)), k)
    op = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(off), len(centroids)))
    gram = (a @ a.T).tocsr()
    if gram.nnz != gram.shape[0] or sweeps <= 0:  # overlapping footprints: Shepard only
        return OutsideFill(off, op)
    inside = (a.T @ sp.diags(1.0 / gram.diagonal())).tocsr()  # least-norm corrections
    n = len(pos)
    is_off = np.zeros(n, bool)
    is_off[off] = True
    adj_rows = _off_adjacency(pos, off, 1.01 * spacing)
    degree = np.asarray(adj_rows.sum(1)).ravel()
    scale = sp.diags(np.where(degree > 0, 1.0 / np.maximum(degree, 1), 0.0))
    keep = sp.diags((degree == 0).astype(float))  # isolated superpixels keep Shepard
    step = (scale @ adj_rows[:, off] + keep).tocsr()
    fixed = (scale @ adj_rows[:, ~is_off] @ inside[~is_off]).tocsr()
    for _ in range(sweeps):
        op = (step @ op + fixed).tocsr()
        op.data[np.abs(op.data) < 1e-4] = 0.0
        op.eliminate_zeros()
    return OutsideFill(off, op)


def _off_adjacency(pos: np.ndarray, off: np.ndarray, radius: float) -> Any:
    """Neighbours within ``radius`` of the superpixels ``off``: ``(off, superpixels)`` CSR.

    Only the rows of ``off`` are built (int32 indices), not the whole adjacency matrix.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    n = len(pos)
    row_of = np.full(n, -1, np.int32)
    row_of[off] = np.arange(len(off), dtype=np.int32)
    pairs = cKDTree(pos).query_pairs(radius, output_type="ndarray").astype(np.int32)
    rows, cols = [], []
    for i, j in ((0, 1), (1, 0)):
        r = row_of[pairs[:, i]]
        sel = r >= 0
        rows.append(r[sel])
        cols.append(pairs[sel, j])
    del pairs
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    del rows, cols
    return sp.csr_matrix((np.ones(len(rows_a)), (rows_a, cols_a)), shape=(len(off), n))
