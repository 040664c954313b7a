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
    """Sparse operators of the fill (see :func:`outside_fill`)."""

    off: np.ndarray  # indices of the superpixels under no footprint
    shepard: Any  # (off, units) CSR
    adj_off: Any  # (off, off) CSR 4-neighbour adjacency
    adj_all: Any  # (off, superpixels) CSR adjacency to footprint superpixels
    degree: np.ndarray  # (off,) number of grid neighbours
    sweeps: int = 30

    def apply(self, mismatch: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """Corrections ``(off, genes)`` from unit mismatches and the footprints' corrections."""
        c = np.asarray(self.shepard @ mismatch)
        fixed = np.asarray(self.adj_all @ inside)
        ok = self.degree > 0
        inv = np.where(ok, 1.0 / np.maximum(self.degree, 1), 0.0)[:, None]
        for _ in range(self.sweeps):
            new = (np.asarray(self.adj_off @ c) + fixed) * inv
            c = np.where(ok[:, None], new, c)
        return c


def outside_fill(
    pos: np.ndarray, a: Any, centroids: np.ndarray, pitch: float, sweeps: int = 30
) -> OutsideFill | None:
    """Build the fill for superpixels at ``pos`` with footprints ``a`` (units x superpixels).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> pos = np.c_[np.arange(5.0), np.zeros(5)]
    >>> a = sp.csr_matrix(np.array([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]]))
    >>> fill = outside_fill(pos, a, np.array([[0.0, 0], [4.0, 0]]), 4.0, sweeps=200)
    >>> inside = np.array([[0.0], [0], [0], [0], [3.0]])
    >>> fill.apply(np.array([[0.0], [3.0]]), inside).round(2).ravel()
    array([0.75, 1.5 , 2.25])
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    off = np.flatnonzero(np.diff(sp.csc_matrix(a).indptr) == 0)
    if not len(off):
        return None
    sample = pos[:: max(1, len(pos) // 20000)]
    spacing = float(np.median(cKDTree(sample).query(sample, k=2)[0][:, 1]))
    radius = np.sqrt(np.diff(sp.csr_matrix(a).indptr) * spacing**2 / np.pi)
    k = min(6, len(centroids))
    dist, idx = cKDTree(centroids).query(pos[off], k=k)
    dist = dist.reshape(len(off), k)
    idx = idx.reshape(len(off), k)
    edge = np.maximum(dist - radius[idx], 0.0)
    w = 1.0 / (edge**2 + (0.05 * pitch) ** 2)
    w /= w.sum(1, keepdims=True)
    rows = np.repeat(np.arange(len(off)), k)
    shepard = sp.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(off), len(centroids)))
    pairs = cKDTree(pos).query_pairs(1.01 * spacing, output_type="ndarray")
    n = len(pos)
    adj = sp.csr_matrix((np.ones(2 * len(pairs)), (np.r_[pairs[:, 0], pairs[:, 1]],
                        np.r_[pairs[:, 1], pairs[:, 0]])), shape=(n, n))  # fmt: skip
    is_off = np.zeros(n, bool)
    is_off[off] = True
    adj_rows = adj[off]
    adj_off = adj_rows[:, off]
    adj_all = adj_rows.multiply(~is_off[None, :]).tocsr()
    degree = np.asarray(adj_rows.sum(1)).ravel()
    return OutsideFill(off, shepard, adj_off, adj_all, degree, sweeps)
