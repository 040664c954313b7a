"""Count depth of the superpixels and the expected log-normalised measurement of a footprint.

A unit's log-normalised value, ``log1p(target_sum * k / depth)`` for a count ``k`` out of
``depth``, depends on its depth as well as on its expression: at low depth most genes are
counted 0 or 1 times, and the log of a sparse count is low on average (Jensen). A spot that
covers little tissue therefore measures lower values than a dense neighbour with the same
expression. :func:`fit_depth` maps the count density (counts per superpixel) over the tissue:
a ridge regression of each unit's log density on its footprint's mean image components, made
footprint-consistent (the density summed over every footprint equals its unit's depth).
:func:`expected_log1p` gives the mean of ``log1p(target_sum * K / depth)`` for Poisson ``K``,
so that a query footprint's measurement can be predicted from the map's rate and the density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DepthMap", "effective_sizes", "expected_log1p", "fit_depth"]


@dataclass
class DepthMap:
    """Log count density of every superpixel (see :func:`fit_depth`)."""

    log_density: np.ndarray  # (superpixels,) log counts per superpixel
    r2: float | None  # leave-one-unit-out R² of the image fit (None without an image)

    def footprint_depth(self, membership: Any) -> np.ndarray:
        """Return the expected total counts of every footprint (rows of ``membership``)."""
        return effective_sizes(membership) * np.asarray(membership @ np.exp(self.log_density))


def effective_sizes(membership: Any) -> np.ndarray:
    """Footprint sizes in superpixels, ``1 / sum(w²)`` of each row-normalised row.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> effective_sizes(sp.csr_matrix([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])).tolist()
    [2.0, 1.0]
    """
    import scipy.sparse as sp

    m = sp.csr_matrix(membership)
    return 1.0 / np.maximum(np.asarray(m.multiply(m).sum(1)).ravel(), 1e-300)


def fit_depth(
    components: np.ndarray | None,
    membership: Any,
    depth: np.ndarray,
    alphas: np.ndarray,
    fill: Any = None,
    weight: float = 1.0,
) -> DepthMap:
    """Fit the log count density of the superpixels to the units' depths.

    Parameters
    ----------
    components
        ``(superpixels, k)`` centred image components, or ``None`` (uniform density inside
        each footprint).
    membership
        ``(units, superpixels)`` row-normalised footprints.
    depth
        ``(units,)`` total counts of every unit.
    alphas
        Ridge penalties tried by generalised cross-validation.
    fill
        :class:`~napari_histosge.models._superres_fill.OutsideFill` that spreads the units'
        corrections to superpixels under no footprint (they keep the image fit otherwise).
    weight
        Scale of the image term of the log density; it is also clipped to the range of the
        units' log densities, so that a superpixel unlike any footprint cannot run away.

    Returns
    -------
    The density map; its footprint totals equal ``depth``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> a = sp.csr_matrix([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    >>> d = fit_depth(None, a, np.array([10.0, 30.0]), np.logspace(-2, 5, 15))
    >>> np.exp(d.log_density).round(3).tolist()
    [5.0, 5.0, 15.0, 15.0]
    """
    import scipy.sparse as sp

    from ._superres_ops import ridge_gcv

    a = sp.csr_matrix(membership, dtype=np.float64)
    dep = np.asarray(depth, dtype=np.float64).ravel()
    if dep.shape != (a.shape[0],):
        raise ValueError(f"Expected one depth per unit ({a.shape[0]}), found {dep.shape}.")
    if not (np.isfinite(dep).all() and (dep > 0).all()):
        raise ValueError("Expected positive finite unit depths (total counts), found others.")
    target = np.log(dep / effective_sizes(a))
    log_density = np.full(a.shape[1], float(target.mean()))
    r2 = None
    if components is not None:
        unit_x = np.asarray(a @ components)
        xbar = unit_x.mean(0)
        w, _, r2s = ridge_gcv(unit_x - xbar, (target - target.mean())[:, None], alphas, False)
        term = weight * ((components - xbar) @ w[:, 0])
        spread = target - target.mean()
        log_density = log_density + np.clip(term, spread.min(), spread.max())
        r2 = float(r2s[0])
    # Footprint consistency: a multiplicative correction per unit, shared by the superpixels
    # that unit covers (averaged where footprints overlap).
    log_c = target - np.log(np.asarray(a @ np.exp(log_density)))
    covered = np.asarray(a.sum(0)).ravel()
    inside = covered > 0
    corr = np.zeros(a.shape[1])
    corr[inside] = np.asarray(a.T @ log_c)[inside] / covered[inside]
    if fill is not None:
        corr[fill.off] = fill.apply(log_c[:, None])[:, 0]
    return DepthMap(log_density=log_density + corr, r2=r2)


def expected_log1p(
    rate: np.ndarray, depth: np.ndarray, target_sum: float = 1e4, exact_below: float = 30.0
) -> np.ndarray:
    """Mean of ``log1p(target_sum * K / depth)`` for ``K ~ Poisson(rate * depth)``.

    Parameters
    ----------
    rate
        ``(n, genes)`` expected fraction of the counts of every gene.
    depth
        ``(n,)`` total counts.
    target_sum
        Normalisation target of the log values.
    exact_below
        Poisson means below this are summed exactly; larger ones use the second-order
        expansion of the log around the mean.

    Examples
    --------
    >>> float(expected_log1p(np.array([[1e-9]]), np.array([100.0]))[0, 0]) < 1e-6
    True
    >>> v = expected_log1p(np.array([[0.01]]), np.array([1e5]))[0, 0]
    >>> bool(abs(v - np.log1p(100.0)) < 1e-3)
    True
    """
    r = np.clip(np.asarray(rate, dtype=np.float64), 0.0, None)
    d = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
    if r.ndim != 2 or r.shape[0] != d.shape[0]:
        raise ValueError(f"Expected rates of shape ({d.shape[0]}, genes), found {r.shape}.")
    mu = r * d
    s = target_sum / d
    out = np.log1p(s * mu) - 0.5 * mu * s**2 / (1.0 + s * mu) ** 2
    small = mu < exact_below
    if small.any():
        m = np.where(small, mu, 0.0)
        pmf = np.exp(-m)
        acc = np.zeros_like(m)
        k_max = int(np.ceil(exact_below + 12.0 * np.sqrt(exact_below) + 10.0))
        for k in range(1, k_max + 1):
            pmf = pmf * m / k
            acc += pmf * np.log1p(s * k)
        out = np.where(small, acc, out)
    return out
