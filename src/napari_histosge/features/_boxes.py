"""Exact means of maps over boxes from summed-area tables, for scattered boxes and grids."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["box_means", "summed_area"]


def summed_area(cells: np.ndarray) -> np.ndarray:
    """Summed-area tables ``(C, h + 1, w + 1)`` float64 of ``(C, h, w)`` maps."""
    n_c, h, w = cells.shape
    sat = np.zeros((n_c, h + 1, w + 1), dtype=np.float64)
    for c in range(n_c):
        np.cumsum(cells[c], axis=0, dtype=np.float64, out=sat[c, 1:, 1:])
        np.cumsum(sat[c, 1:, 1:], axis=1, out=sat[c, 1:, 1:])
    return sat


def box_means(
    sat: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Means ``(n, C)`` over fractional boxes (cell units) from summed-area tables.

    The summed-area table of a piecewise-constant map is bilinear within each cell, so
    bilinear interpolation of the table at fractional corners gives exact box integrals.
    Parts of a box outside the map are left out of the mean. Boxes on a grid (few distinct
    columns and rows, as superpixels are) are computed for the whole grid at once with two
    sparse products per channel, instead of gathering four corners per box.

    Examples
    --------
    >>> sat = summed_area(np.arange(16.0).reshape(1, 4, 4))
    >>> box_means(sat, np.array([0.0, 1.0]), np.zeros(2), np.array([2.0, 3.0]), np.full(2, 2.0))
    array([[2.5],
           [3.5]])
    """
    _, hp, wp = sat.shape
    h, w = hp - 1, wp - 1
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1e-12)
    cols = _edges(x0, x1) if len(x0) > 64 else None
    rows = _edges(y0, y1) if cols is not None else None
    if cols is not None and rows is not None and len(cols[0]) * len(rows[0]) <= 4 * len(x0):
        (cx0, cx1, col_of), (ry0, ry1, row_of) = cols, rows
        dy = _interp(ry1, h) - _interp(ry0, h)  # (rows, h + 1)
        dx = _interp(cx1, w) - _interp(cx0, w)  # (cols, w + 1)
        grid = np.stack([dy @ (dx @ s.T).T for s in sat], axis=-1)  # (rows, cols, C)
        return grid[row_of, col_of] / area[:, None]

    def at(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        ix, fx = _cell_and_fraction(xs, w)
        iy, fy = _cell_and_fraction(ys, h)
        return (
            sat[:, iy, ix] * ((1 - fx) * (1 - fy))
            + sat[:, iy, ix + 1] * (fx * (1 - fy))
            + sat[:, iy + 1, ix] * ((1 - fx) * fy)
            + sat[:, iy + 1, ix + 1] * (fx * fy)
        )

    total = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    return (total / area).T


def _edges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Distinct ``lo`` values, their ``hi`` and each box's index, or None if ``hi`` varies."""
    ulo, index = np.unique(lo, return_inverse=True)
    index = index.ravel()
    uhi = np.empty_like(ulo)
    uhi[index] = hi
    return (ulo, uhi, index) if np.array_equal(uhi[index], hi) else None


def _cell_and_fraction(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Table cell ``i`` in ``[0, n - 1]`` at ``coords`` in ``[0, n]``, and the fraction past it."""
    i = np.clip(np.floor(coords).astype(np.int64), 0, max(n - 1, 0))
    return i, coords - i


def _interp(coords: np.ndarray, n: int) -> Any:
    """Linear interpolation weights ``(len(coords), n + 1)`` at ``coords`` in ``[0, n]``."""
    import scipy.sparse as sp

    i, f = _cell_and_fraction(coords, n)
    rows = np.repeat(np.arange(len(coords)), 2)
    cols = np.c_[i, i + 1].ravel()
    vals = np.c_[1.0 - f, f].ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(coords), n + 1))
