"""Covariances of the uncertainty: the field's kernel shapes, and the units' counting noise.

The map's mean uses a Gaussian kernel scaled to the units' pitch; the field whose posterior
variance is the map's uncertainty may use another length (in µm, not tied to the pitch) and a
rougher shape: ``"exponential"`` (Matérn 1/2, ``exp(-d / h)``), whose variation below any
length does not vanish as a Gaussian's does. A unit's counting noise is the variance of its
log-normalised value under Poisson counts at its depth (:func:`var_log1p`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SHAPES", "covariance", "footprint_covariance", "support", "var_log1p"]

#: Kernel shapes of the uncertainty's field.
SHAPES = ("gaussian", "exponential")


def support(shape: str, truncate: float) -> float:
    """Kernel support in lengths: the Gaussian's ``truncate``, further for the exponential.

    Examples
    --------
    >>> support("gaussian", 3.0), support("exponential", 3.0)
    (3.0, 4.5)
    """
    return float(truncate) if shape == "gaussian" else 1.5 * float(truncate)


def covariance(d: np.ndarray, h: float, shape: str) -> np.ndarray:
    """Covariance at distances ``d`` of a unit-variance field of length ``h``.

    Examples
    --------
    >>> covariance(np.array([0.0, 1.0]), 1.0, "exponential").round(3).tolist()
    [1.0, 0.368]
    """
    if shape == "gaussian":
        return np.exp(-0.5 * (d / h) ** 2)
    if shape == "exponential":
        return np.exp(-d / h)
    raise ValueError(f"Expected a kernel shape in {SHAPES}, found `{shape}`.")


def footprint_covariance(
    nodes_xy: np.ndarray, foot: np.ndarray, a_f: Any, h: float, cut: float, shape: str
) -> Any:
    """Covariance of every node with each footprint's mean: ``K @ a_f.T``, ``(nodes, units)``.

    ``K`` is the ``(nodes, footprint nodes)`` covariance of length ``h``, cut at distance
    ``cut``; ``a_f`` the ``(units, footprint nodes)`` weights. ``K`` is built a block of
    footprint nodes at a time (a few million entries).
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    tree = cKDTree(nodes_xy)
    a_t = sp.csr_matrix(a_f.T)
    out = sp.csr_matrix((len(nodes_xy), a_t.shape[1]))
    spacing = float(np.median(np.diff(np.unique(nodes_xy[:, 0])))) if len(nodes_xy) > 1 else cut
    per_node = max(1, int(np.pi * (cut / max(spacing, 1e-12)) ** 2))
    step = max(1, (1 << 22) // per_node)
    for j0 in range(0, len(foot), step):
        sub = foot[j0 : j0 + step]
        pairs = tree.sparse_distance_matrix(cKDTree(nodes_xy[sub]), cut, output_type="ndarray")
        k = sp.csr_matrix(
            (covariance(pairs["v"], h, shape), (pairs["i"], pairs["j"])),
            shape=(len(nodes_xy), len(sub)),
        )
        out = out + (k @ a_t[j0 : j0 + step]).tocsr()
    return out


def var_log1p(
    rate: np.ndarray, depth: np.ndarray, target_sum: float = 1e4, exact_below: float = 30.0
) -> np.ndarray:
    """Variance of ``log1p(target_sum * K / depth)`` for ``K ~ Poisson(rate * depth)``.

    Examples
    --------
    >>> float(var_log1p(np.array([[0.0]]), np.array([100.0]))[0, 0])
    0.0
    >>> v = var_log1p(np.array([[0.01]]), np.array([1e5]))[0, 0]  # mean 1,000 counts
    >>> bool(abs(v - 1e-3) < 1e-4)
    True
    """
    r = np.clip(np.asarray(rate, dtype=np.float64), 0.0, None)
    d = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
    mu = r * d
    s = target_sum / d
    out = mu * (s / (1.0 + s * mu)) ** 2  # delta method for large means
    idx = np.flatnonzero(mu < exact_below)
    if len(idx):
        # Exact sums over k, the largest means first: each mean needs its own number of terms
        # (mu + 12 sqrt(mu) + 10), so the sums run over fewer values as k grows.
        m = mu.ravel()[idx]
        order = np.argsort(-m, kind="stable")
        m, unit = m[order], (idx // mu.shape[1])[order]
        s_unit = np.broadcast_to(s, (mu.shape[0], 1)).ravel()
        needed = -np.ceil(m + 12.0 * np.sqrt(m) + 10.0)  # ascending
        pmf = np.exp(-m)
        e1 = np.zeros_like(m)
        e2 = np.zeros_like(m)
        for k in range(1, int(-needed[0]) + 1):
            n = int(np.searchsorted(needed, -k, side="right"))
            pmf[:n] *= m[:n] / k
            v = np.log1p(s_unit * k)[unit[:n]]
            pv = pmf[:n] * v
            e1[:n] += pv
            e2[:n] += pv * v
        out = out.copy()
        out.ravel()[idx[order]] = np.maximum(e2 - e1**2, 0.0)
    return out
