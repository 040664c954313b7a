"""Linear-algebra helpers of the super-resolution model: bilinear nodes, neighbours, ridge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bilinear", "neighbour_means", "ridge_gcv"]


def bilinear(positions: np.ndarray, lo: np.ndarray, step: float, shape: tuple[int, int]) -> Any:
    """Sparse bilinear interpolation weights ``(n, nodes)`` from a regular node grid."""
    import scipy.sparse as sp

    h, w = shape
    f = (positions - lo) / step
    i0 = np.clip(np.floor(f).astype(np.int64), 0, [w - 2, h - 2])
    t = np.clip(f - i0, 0.0, 1.0)
    rows, cols, vals = [], [], []
    n = len(positions)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        wx = t[:, 0] if dx else 1 - t[:, 0]
        wy = t[:, 1] if dy else 1 - t[:, 1]
        rows.append(np.arange(n))
        cols.append((i0[:, 1] + dy) * w + (i0[:, 0] + dx))
        vals.append(wx * wy)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, h * w)
    )


def neighbour_means(xy: np.ndarray, bandwidth: float) -> np.ndarray:
    """Row-normalised Gaussian weights ``(n, n)`` to the other units (self excluded)."""
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    w = np.exp(-0.5 * d2 / bandwidth**2)
    np.fill_diagonal(w, 0.0)
    return w / np.maximum(w.sum(1, keepdims=True), 1e-300)


def ridge_gcv(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float], per_gene: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge weights ``(k, g)`` of centred ``x`` on centred ``y``, penalties by GCV.

    Returns the weights, the chosen penalty of each gene (one shared penalty when
    ``per_gene`` is false) and each gene's leave-one-out R² at that penalty.
    """
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y  # (k, g)
    n = len(y)
    resid0 = (y**2).sum(0) - (uty**2).sum(0)  # part of y outside the span of x, per gene
    a = np.asarray(alphas, dtype=float)
    d = s[None, :] ** 2 / (s[None, :] ** 2 + a[:, None])  # (alphas, k)
    resid = resid0[None, :] + np.einsum("ak,kg->ag", (1 - d) ** 2, uty**2)
    gcv = resid / np.maximum(n * (1 - d.sum(1) / n) ** 2, 1e-12)[:, None]  # (alphas, g)
    shared = int(np.argmin(gcv.sum(1)))
    best = np.argmin(gcv, axis=0) if per_gene else np.full(y.shape[1], shared)
    shrink = s[:, None] / (s[:, None] ** 2 + a[best][None, :])  # (k, g)
    weights = vt.T @ (shrink * uty)
    dd = d[best]  # (g, k)
    fitted = u @ (dd.T * uty)
    lev = (u**2) @ dd.T  # (n, g) hat-matrix diagonals
    loo = (y - fitted) / np.maximum(1.0 - lev, 1e-6)
    r2 = 1.0 - (loo**2).sum(0) / np.maximum((y**2).sum(0), 1e-12)
    return weights, a[best], r2
