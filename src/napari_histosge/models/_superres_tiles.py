"""The units' kernel system solved locally, a tile of positions at a time.

Each tile takes only the units within reach of it (those the kernel reaches, plus a margin:
the farther ones are screened by them), so the cost grows with the slide's area, not with the
square of its units. Used by :mod:`._superres_uncertainty` for the field's posterior variance
and the units' leave-one-out variances.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["local_explained", "local_gram", "local_inverse_diag"]

#: Up to this many units the units' gram is sliced as a dense array (128 MB at most).
DENSE_UNITS = 4096


def _groups(xy: np.ndarray, tile: float) -> list[np.ndarray]:
    """Return the indices of the points of ``xy`` in each square tile of side ``tile``."""
    keys = np.floor(xy / tile).astype(np.int64)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inv[order])) + 1)


def _block(gram: Any, near: np.ndarray) -> np.ndarray:
    """Return ``gram[near][:, near]`` as a dense array (``gram`` dense or CSR)."""
    if isinstance(gram, np.ndarray):
        return gram[np.ix_(near, near)]
    return gram[near][:, near].toarray()


def local_gram(gram: Any) -> Any:
    """Return the units' gram as the tile solvers slice it: dense up to :data:`DENSE_UNITS`.

    A caller that runs several solvers on one gram converts it once and passes the result.
    """
    import scipy.sparse as sp

    if isinstance(gram, np.ndarray):
        return gram
    gram = sp.csr_matrix(gram)
    return gram.toarray() if gram.shape[0] <= DENSE_UNITS else gram


def _near(tree: Any, xy: np.ndarray, reach: float, ordered: bool | None = None) -> np.ndarray:
    """Return the units within ``reach`` of the points ``xy`` (a tile), from a disk around them."""
    centre = xy.mean(0)
    radius = float(np.sqrt(((xy - centre) ** 2).sum(1)).max()) + reach
    return np.asarray(tree.query_ball_point(centre, radius, return_sorted=ordered), np.int64)


def local_explained(
    cross: Any,
    gram: Any,
    q_xy: np.ndarray,
    unit_xy: np.ndarray,
    ratios: tuple[float, ...],
    tile: float,
    reach: float,
) -> np.ndarray:
    """``diag(cross @ inv(gram + r I) @ cross.T)`` for every ratio ``r``: ``(ratios, queries)``.

    Queries are taken a tile at a time, with the units within ``reach`` of the tile only.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree
    from threadpoolctl import threadpool_limits

    cross = sp.csr_matrix(cross)
    out = np.zeros((len(ratios), cross.shape[0]))
    with threadpool_limits(1):  # small matrices: threads cost more than they give
        _explained_tiles(cross, local_gram(gram), q_xy, cKDTree(unit_xy), ratios, tile, reach, out)
    return out


def _explained_tiles(
    cross: Any,
    gram: Any,
    q_xy: np.ndarray,
    tree: Any,
    ratios: tuple[float, ...],
    tile: float,
    reach: float,
    out: np.ndarray,
) -> None:
    groups = _groups(q_xy, tile)
    rows = cross[np.concatenate(groups)]  # a tile's rows are then a contiguous slice
    lookup = np.full(cross.shape[1], -1, dtype=np.int64)
    start = 0
    for idx in groups:
        part = rows[start : start + len(idx)]
        start += len(idx)
        near = _near(tree, q_xy[idx], reach)
        if not len(near):
            continue
        lookup[near] = np.arange(len(near))
        col = lookup[part.indices]
        keep = col >= 0
        k = np.zeros((len(idx), len(near)))
        k[np.repeat(np.arange(len(idx)), np.diff(part.indptr))[keep], col[keep]] = part.data[keep]
        lookup[near] = -1
        g = _block(gram, near)
        w, v = np.linalg.eigh(0.5 * (g + g.T))
        kv2 = (k @ v) ** 2
        w = np.maximum(w, 0.0)
        for j, r in enumerate(ratios):
            out[j, idx] = (kv2 / (w + r + 1e-9)).sum(1)


def local_inverse_diag(
    gram: Any, ratios: tuple[float, ...], unit_xy: np.ndarray, tile: float, reach: float
) -> np.ndarray:
    """Diagonal of ``inv(gram + r I)`` for every ratio ``r``: ``(ratios, units)``.

    Each unit's from the units within ``reach``; a tile's neighbourhood is taken once for all.
    """
    from scipy.spatial import cKDTree
    from threadpoolctl import threadpool_limits

    gram = local_gram(gram)
    tree = cKDTree(unit_xy)
    out = np.empty((len(ratios), gram.shape[0]))
    with threadpool_limits(1):
        for idx in _groups(unit_xy, tile):
            near = _near(tree, unit_xy[idx], reach, ordered=True)
            g = _block(gram, near)
            g = 0.5 * (g + g.T)
            pos = np.searchsorted(near, idx)
            eye = np.eye(len(near))
            for j, r in enumerate(ratios):
                out[j, idx] = np.linalg.inv(g + (r + 1e-9) * eye)[pos, pos]
    return out
