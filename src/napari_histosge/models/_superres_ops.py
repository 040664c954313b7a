"""Linear algebra of the super-resolution model: nodes, kernel, neighbours, ridge, components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "bilinear",
    "feature_components",
    "footprint_kernel",
    "neighbour_means",
    "ridge_gcv",
]

#: Rows of the superpixel features standardised at a time (a few tens of MB in float64).
_ROWS = 1 << 16


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


def feature_components(features: np.ndarray, covered: np.ndarray, k: int) -> np.ndarray:
    """Leading ``k`` principal components of the standardised features, ``(n, k)`` float32.

    The mean, standard deviation and correlation matrix are taken over the ``covered`` rows
    (superpixels under a footprint) and the projection is applied to every row, both in
    blocks of rows accumulated in float64: no full-size copy of the features is made, so a
    whole slide (half a million superpixels x 88 features) costs little beyond its features.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(size=(500, 4)).astype(np.float32) * [1.0, 2.0, 3.0, 0.0]
    >>> comps = feature_components(f, np.ones(500, bool), 2)
    >>> comps.shape, comps.dtype.name
    ((500, 2), 'float32')
    >>> z = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1.0)
    >>> bool(np.allclose(np.abs(comps), np.abs(z @ np.linalg.eigh(np.cov(z.T))[1][:, [3, 2]]),
    ...                  atol=1e-4))
    True
    """
    f = features if features.dtype.kind == "f" else np.asarray(features, np.float32)
    if f.ndim != 2:
        raise ValueError(f"Expected features of shape (n, d), found {f.shape}.")
    n, d = f.shape
    blocks = [slice(i, min(i + _ROWS, n)) for i in range(0, n, _ROWS)]
    m = int(np.count_nonzero(covered))
    total = np.zeros(d)
    for b in blocks:
        x = f[b].astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("Expected finite superpixel features, found NaN or infinite ones.")
        total += x[covered[b]].sum(0)
    mu = total / max(m, 1)
    cross = np.zeros((d, d))
    for b in blocks:
        x = f[b][covered[b]].astype(np.float64) - mu
        cross += x.T @ x
    sd = np.sqrt(np.diag(cross) / max(m, 1))
    scale = np.where(sd > 1e-9, sd, 1.0)
    corr = cross / np.outer(scale, scale) / max(m - 1, 1)
    evals, evecs = np.linalg.eigh(corr)
    order = np.argsort(-evals, kind="stable")[:k]
    proj = evecs[:, order] / scale[:, None]
    shift = mu @ proj
    out = np.empty((n, len(order)), dtype=np.float32)
    for b in blocks:
        out[b] = f[b].astype(np.float64) @ proj - shift
    return out


def footprint_kernel(
    nodes_xy: np.ndarray, foot: np.ndarray, a_f: Any, h: float, truncate: float, spacing: float
) -> Any:
    """Sum the truncated Gaussian kernel from every node over each unit's footprint nodes.

    Returns ``K @ a_f.T``, ``(nodes, units)`` CSR, where ``K`` is the ``(nodes, footprint
    nodes)`` kernel of bandwidth ``h`` cut at ``truncate * h`` and ``a_f`` the ``(units,
    footprint nodes)`` weights. ``K`` itself (hundreds of entries per node) is only built a
    block of footprint nodes at a time.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    tree = cKDTree(nodes_xy)
    a_t = sp.csr_matrix(a_f.T)
    out = sp.csr_matrix((len(nodes_xy), a_t.shape[1]))
    step = max(1, (1 << 22) // max(1, int(np.pi * (truncate * h / spacing) ** 2)))
    for j0 in range(0, len(foot), step):
        sub = foot[j0 : j0 + step]
        pairs = tree.sparse_distance_matrix(
            cKDTree(nodes_xy[sub]), truncate * h, output_type="ndarray"
        )
        k = sp.csr_matrix(
            (np.exp(-0.5 * (pairs["v"] / h) ** 2), (pairs["i"], pairs["j"])),
            shape=(len(nodes_xy), len(sub)),
        )
        part = (k @ a_t[j0 : j0 + step]).tocsr()
        out = out + part
    return out
