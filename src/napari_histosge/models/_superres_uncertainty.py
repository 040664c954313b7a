"""Uncertainty and reliability of the super-resolution map.

The map's smooth field is the posterior mean of a Gaussian process: the residual of every
gene (what the mean profile and the image term leave unexplained) is a field with the
model's Gaussian kernel as covariance, observed as footprint means with noise. The same
process gives each superpixel's posterior variance (the field's "kriging variance"): small
inside and near measured footprints, back to the prior far from them. Per gene:

- the field's amplitude ``sigma2`` (method of moments: the units' residual variance minus
  their counting noise, over the footprints' prior variance);
- the counting noise of every unit at its depth (the variance of ``log1p(target_sum * K /
  depth)`` for Poisson ``K``; none when the depths are unknown), whose ratio to the
  amplitude sets how closely the field follows the units. The posterior variance is computed
  once for a few noise ratios (a grid) and interpolated in ``log`` ratio for each gene, so
  that a thousand genes cost two multiply-adds per superpixel;
- the uncertainty of the image term: the ridge weights' covariance, propagated to every
  superpixel through its image components.

A footprint (a real spot inside a pooled pseudo-spot, a cell) gets the posterior variance of
its mean, with the covariances between its superpixels, and a measurement at a given depth
adds that depth's counting noise (:func:`measurement_sd`).

Reliability of each gene: the leave-one-unit-out R² of the map (each unit predicted from the
others by the same field, closed form for the kernel system) and the share of the map's
variance across superpixels that the image term carries.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ._superres_covariance import var_log1p
from ._superres_tiles import local_explained, local_gram, local_inverse_diag

#: A fitted :class:`~.superres.SuperResModel` (not imported: that module imports this one).
SuperResModel = Any

__all__ = [
    "NOISE_RATIOS",
    "Uncertainty",
    "fit_uncertainty",
    "footprint_variance",
    "measurement_sd",
    "measurement_variance",
    "var_log1p",
]

#: Noise-to-amplitude ratios at which the field's posterior variance is computed.
NOISE_RATIOS = (0.02, 0.1, 0.5, 2.5, 12.5)


@dataclass
class Uncertainty:
    """Posterior standard deviation of the map, per superpixel and gene."""

    node_var: np.ndarray  # (ratios, superpixels) posterior variance of the unit-amplitude field
    sigma2: np.ndarray  # (genes,) field amplitude
    ratio_pos: np.ndarray  # (genes,) fractional index of each gene's noise ratio in the grid
    image_lev: np.ndarray | None  # (superpixels,) image components through the weights' cov
    image_var: np.ndarray | None  # (genes,) scale of the image term's variance
    loo_r2: np.ndarray  # (genes,) leave-one-unit-out R² of the map
    image_share: np.ndarray  # (genes,) share of the map's variance carried by the image term
    scale: float = 1.0  # calibration factor of the standard deviations
    kernel: Any = None  # (nodes, units) CSR: the field's covariance to every footprint
    length: float = 1.0  # of that covariance, in the positions' unit (µm)
    shape: str = "gaussian"  # of that covariance (:data:`._superres_covariance.SHAPES`)

    def _mix(self, cols: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Interpolate ``table`` ``(ratios, n)`` at each gene's noise ratio: ``(n, cols)``."""
        pos = self.ratio_pos[cols]
        j = np.clip(np.floor(pos).astype(np.int64), 0, len(table) - 2)
        t = (pos - j).astype(np.float32)
        lo = table[j].T  # (n, cols)
        out = table[j + 1].T - lo  # in place from here: whole slides have 500k superpixels
        out *= t
        out += lo
        return out

    def sd(self, cols: np.ndarray, step: int = 8192) -> np.ndarray:
        """Return the standard deviation ``(superpixels, len(cols))`` of genes ``cols``.

        float32, computed gene by gene (the transpose of a C-ordered ``(len(cols),
        superpixels)`` array) ``step`` superpixels at a time, so that the temporaries stay in
        the cache.
        """
        pos = self.ratio_pos[cols]
        j = np.clip(np.floor(pos).astype(np.int64), 0, len(self.node_var) - 2)
        t = (pos - j).astype(np.float32)[:, None]
        amp = self.sigma2[cols].astype(np.float32)[:, None]
        lev, img = self.image_lev, self.image_var
        img_var = None if lev is None or img is None else img[cols].astype(np.float32)[:, None]
        n = self.node_var.shape[1]
        out = np.empty((len(cols), n), dtype=np.float32)
        tmp = np.empty((len(cols), min(step, n)), dtype=np.float32)
        for a in range(0, n, step):
            b = min(a + step, n)
            var, extra = out[:, a:b], tmp[:, : b - a]
            lo = self.node_var[j, a:b]
            np.take(self.node_var[:, a:b], j + 1, axis=0, out=extra)
            np.subtract(extra, lo, out=var)
            var *= t  # the noise ratio's interpolation, as in :meth:`_mix`
            var += lo
            var *= amp
            if img_var is not None:
                np.multiply(lev[a:b], img_var, out=extra)
                var += extra
            np.maximum(var, 0.0, out=var)
            np.sqrt(var, out=var)
            var *= np.float32(self.scale)
        return out.T


def _geometry(
    model: SuperResModel, h: float, shape: str = "gaussian"
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Return unit and node positions, the tile side and the kernel's reach with a margin."""
    from ._superres_covariance import support

    a_nodes = (model.membership @ model.interp).tocsr()
    unit_xy = np.asarray(a_nodes @ model.nodes_xy)
    reach = support(shape, model.config.truncate) * h + 1.5 * model.pitch
    return unit_xy, model.nodes_xy, 2.0 * float(model.pitch), float(reach)


def unit_noise(model: SuperResModel) -> np.ndarray | None:
    """Return the counting noise variance ``(units, genes)`` of the units at their depths."""
    if model.depth is None or model.config.aggregate != "log":
        return None
    depth = model.depth.footprint_depth(model.membership)
    ts = model.config.target_sum
    return var_log1p(np.expm1(model.values) / ts, depth, ts)


def _uncertainty_kernel(model: SuperResModel, h: float, shape: str) -> tuple[Any, Any]:
    """Return the field's covariance to every unit, ``(nodes, units)``, and the units' gram."""
    from ._superres_covariance import footprint_covariance, support

    a_nodes = (model.membership @ model.interp).tocsc()
    own = shape == "gaussian" and np.isclose(h, model.config.bandwidth * model.pitch)
    if own or model.nodes_xy is None:
        kernel = model.kernel
    else:
        foot = np.flatnonzero(np.diff(a_nodes.indptr) > 0)
        cut = support(shape, model.config.truncate) * h
        kernel = footprint_covariance(model.nodes_xy, foot, a_nodes[:, foot].tocsr(), h, cut, shape)
    return kernel, (a_nodes.tocsr() @ kernel).tocsr()


def _cv_amplitude(gram: Any, ratio: float, resid: np.ndarray, inv_diag: np.ndarray) -> np.ndarray:
    """Amplitude per gene from the LOO residuals of the field at noise ``ratio``.

    ``inv_diag``: the diagonal of ``inv(gram + ratio I)`` (:func:`local_inverse_diag`).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n = gram.shape[0]
    system = sp.csc_matrix(gram + (ratio + 1e-9) * sp.identity(n, format="csc"))
    # Symmetric positive definite: ordered on A + A^T, diagonal pivots (a quarter less fill)
    opts = {"permc_spec": "MMD_AT_PLUS_A", "diag_pivot_thresh": 0.01}
    coef = splu(system, **opts, options={"SymmetricMode": True}).solve(resid)
    return (coef**2 / inv_diag[:, None]).mean(0)


@threadpool_limits.wrap(limits=1)  # small matrices: BLAS threads cost more than they give
def fit_uncertainty(
    model: SuperResModel,
    *,
    ratios: tuple[float, ...] = NOISE_RATIOS,
    scale: float = 1.0,
    bandwidth: float | None = None,
    amplitude: str = "cv",
    length: float | None = None,
    shape: str | None = None,
    sample: int = 20000,
) -> Uncertainty:
    """Fit the uncertainty of a fitted model (see the module's docstring).

    Parameters
    ----------
    model
        A fitted super-resolution model (``aggregate="log"``).
    ratios
        Grid of noise-to-amplitude ratios for the field's posterior variance.
    scale
        Calibration factor applied to every standard deviation.
    bandwidth
        Kernel bandwidth of the field's covariance, in unit pitches (the model's by default).
    length
        Length of the field's covariance in the positions' unit (µm), instead of
        ``bandwidth`` pitches (``None``: the model config's ``uncertainty_length_um``).
    shape
        ``"gaussian"`` or ``"exponential"`` (``None``: the config's ``uncertainty_shape``).
    amplitude
        ``"cv"``: each gene's amplitude by leave-one-unit-out cross-validation (the units'
        LOO errors match their predicted LOO variance on average; robust to a kernel that is
        too smooth); ``"moments"``: the units' residual variance minus their counting noise.
    sample
        Superpixels (a fixed subsample) over which each gene's image share is taken.

    Returns
    -------
    The uncertainty, attached to nothing: ``model.uncertainty`` holds it after a fit.
    """
    if amplitude not in ("cv", "moments"):
        raise ValueError(f"Expected `amplitude` 'cv' or 'moments', found `{amplitude}`.")
    cfg = model.config
    bw = float(cfg.bandwidth if bandwidth is None else bandwidth)
    length = getattr(cfg, "uncertainty_length_um", None) if length is None else length
    h = float(bw * model.pitch if length is None else length)
    shape = str(shape or getattr(cfg, "uncertainty_shape", "gaussian"))
    a = model.membership
    y = model.values
    n_u, n_g = y.shape
    kernel, gram = _uncertainty_kernel(model, h, shape)
    gbar = float(np.mean(gram.diagonal()))
    resid = y - model.mean
    if model.components is not None and model.weights is not None:
        unit_x = np.asarray(a @ model.components)
        resid = resid - model.config.image_weight * (unit_x @ model.weights)
    unit_xy, nodes_xy, tile, reach = _geometry(model, h, shape)
    # Two threads: the node variances, the inverse diagonals and the LOO R² beside the counting
    # noise, then the amplitudes' solves (the same numbers in any order; the solvers release
    # the GIL).
    local = local_gram(gram)  # one dense copy for both tile solvers (128 MB at 4,000 units)
    with ThreadPoolExecutor(max_workers=2) as pool:
        explained_f = pool.submit(
            local_explained, kernel, local, nodes_xy, unit_xy, ratios, tile, reach
        )
        diags_f = (
            pool.submit(local_inverse_diag, local, ratios, unit_xy, tile, reach)
            if amplitude == "cv"
            else None
        )
        loo_f = pool.submit(_loo_r2, model, unit_xy, tile)
        noise = unit_noise(model)
        tau2 = np.zeros(n_g) if noise is None else noise.mean(0)
        steps = np.arange(len(ratios), dtype=np.float64)
        grid = np.log(np.asarray(ratios, dtype=np.float64))
        total = (resid**2).mean(0)
        sigma2 = np.maximum(np.maximum(total - tau2, 0.1 * total), 1e-12) / max(gbar, 1e-12)
        pos = np.interp(np.log(np.clip(tau2 / sigma2, ratios[0], ratios[-1])), grid, steps)
        if amplitude == "cv":
            # Each unit's LOO residual over its LOO standard deviation should be 1 on average;
            # the noise ratio depends on the amplitude: start from the moments, iterate.
            diags = diags_f.result()
            solve = lambda j: _cv_amplitude(gram, ratios[j], resid, diags[j])  # noqa: E731
            cv = np.stack(list(pool.map(solve, range(len(ratios)))))
            genes = np.arange(n_g)
            for _ in range(3):
                j = np.clip(np.floor(pos).astype(np.int64), 0, len(ratios) - 2)
                t = pos - j
                sigma2 = np.maximum(cv[j, genes] * (1 - t) + cv[j + 1, genes] * t, 1e-12)
                pos = np.interp(np.log(np.clip(tau2 / sigma2, ratios[0], ratios[-1])), grid, steps)
        explained, loo_r2 = explained_f.result(), loo_f.result()
    ratio_pos = pos
    node_rows = np.clip(1.0 - explained, 0.0, 1.0)  # (ratios, nodes)
    node_var = np.asarray(model.interp @ node_rows.T, dtype=np.float32).T
    image_lev, image_var = _image_variance(model, resid)
    share = _image_share(model, sample)
    return Uncertainty(
        node_var=np.ascontiguousarray(node_var),
        sigma2=sigma2,
        ratio_pos=ratio_pos,
        image_lev=image_lev,
        image_var=image_var,
        loo_r2=loo_r2,
        image_share=share,
        scale=float(scale),
        kernel=kernel,
        length=h,
        shape=shape,
    )


def _loo_r2(model: SuperResModel, unit_xy: np.ndarray, tile: float) -> np.ndarray:
    """Leave-one-unit-out R² of the model's own field per gene: coef / diag(inverse system)."""
    cfg, y = model.config, model.values
    own_gram = ((model.membership @ model.interp) @ model.kernel).tocsr()
    nugget = (cfg.nugget + 1e-9) * float(np.mean(own_gram.diagonal()))
    _u, _n, _t, own_reach = _geometry(model, cfg.bandwidth * model.pitch)
    inv_diag = local_inverse_diag(own_gram, (nugget,), unit_xy, tile, own_reach)[0]
    loo = model.coef / inv_diag[:, None]
    centred = y - y.mean(0)
    return 1.0 - (loo**2).sum(0) / np.maximum((centred**2).sum(0), 1e-12)


def _image_variance(
    model: SuperResModel, resid: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Variance of the image term from its ridge weights' covariance, per superpixel x gene.

    ``Cov(w) = s2 * V diag(d / (d + alpha)^2) V^T`` for the unit components' singular values
    ``d`` (squared) and the penalty ``alpha``; ``s2`` is each gene's residual variance, and
    the gene's shrinkage and the image weight scale the term.
    """
    if model.components is None or model.weights is None or model.unit_components is None:
        return None, None
    xs = model.unit_components
    _u, s, vt = np.linalg.svd(xs, full_matrices=False)
    alpha = float(model.info.get("ridge_alpha_median") or 0.0)
    factor = vt.T * (s / (s**2 + alpha))[None, :]
    lev = np.einsum("ij,ij->i", model.components @ factor, model.components @ factor)
    n_u = len(resid)
    s2 = (resid**2).sum(0) / max(n_u - xs.shape[1], 1)
    scale = (model.config.image_weight * model.image_shrink) ** 2
    return lev.astype(np.float32), s2 * scale


def _image_share(model: SuperResModel, sample: int) -> np.ndarray:
    """Share of each gene's map variance (over superpixels) carried by the image term."""
    n_g = len(model.genes)
    if model.components is None or model.weights is None:
        return np.zeros(n_g)
    rng = np.random.default_rng(0)
    n = model.n_superpixels
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    img = model.components[idx] @ model.weights * model.config.image_weight
    smooth = np.asarray((model.interp[idx] @ model.kernel) @ model.coef)
    vi, vs = img.var(0), smooth.var(0)
    return vi / np.maximum(vi + vs, 1e-12)


def footprint_variance(model: SuperResModel, unc: Uncertainty, membership: Any) -> np.ndarray:
    """Posterior variance ``(queries, genes)`` of the map's mean over query footprints.

    ``membership`` is ``(queries, superpixels)``, rows summing to one (real spots, cells).
    The covariances between the superpixels of a footprint are counted, so a large footprint
    is more certain than its superpixels.
    """
    import scipy.sparse as sp

    from ._superres_covariance import footprint_covariance, support

    if model.nodes_xy is None:
        raise ValueError("Expected a model fitted with its kernel nodes, found none.")
    q = sp.csr_matrix(membership, dtype=np.float64)
    q_nodes = (q @ model.interp).tocsc()
    foot = np.flatnonzero(np.diff(q_nodes.indptr) > 0)
    q_f = q_nodes[:, foot].tocsr()
    cut = support(unc.shape, model.config.truncate) * unc.length
    kq = footprint_covariance(model.nodes_xy, foot, q_f, unc.length, cut, unc.shape)
    prior = np.asarray(q_f.multiply(sp.csr_matrix(kq[foot].T)).sum(1)).ravel()
    cross = (q_nodes @ unc.kernel).tocsr()
    a_nodes = (model.membership @ model.interp).tocsr()
    gram = (a_nodes @ unc.kernel).tocsr()
    unit_xy, nodes_xy, tile, reach = _geometry(model, unc.length, unc.shape)
    q_xy = np.asarray(q_nodes.tocsr() @ nodes_xy) / np.maximum(np.asarray(q_nodes.sum(1)), 1e-300)
    explained = local_explained(cross, gram, q_xy, unit_xy, NOISE_RATIOS, tile, reach)
    rows = np.clip(prior[None, :] - explained, 0.0, None)
    field = unc._mix(np.arange(len(unc.sigma2)), rows) * unc.sigma2[None, :]
    if unc.image_lev is not None and unc.image_var is not None and model.components is not None:
        xq = np.asarray(q @ model.components)
        xs = model.unit_components
        _u, s, vt = np.linalg.svd(xs, full_matrices=False)
        alpha = float(model.info.get("ridge_alpha_median") or 0.0)
        z = xq @ (vt.T * (s / (s**2 + alpha))[None, :])
        field = field + (z**2).sum(1)[:, None] * unc.image_var[None, :]
    return field * unc.scale**2


def measurement_variance(
    model: SuperResModel, membership: Any, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the two parts of the predictive variance of what footprints would measure.

    The posterior variance of the map's mean over each footprint (calibrated) and the
    counting noise at each footprint's expected depth (from the model's count-density map)
    around ``predicted`` (the expected log-normalised measurement, ``(queries, genes)``);
    zero noise when the model has no depths.
    """
    unc = model.uncertainty
    if unc is None:
        raise ValueError("Expected a model fitted with its uncertainty, found none.")
    field = footprint_variance(model, unc, membership)
    noise = np.zeros_like(field)
    if model.depth is not None:
        ts = model.config.target_sum
        depth = model.depth.footprint_depth(membership)
        noise = var_log1p(np.expm1(np.clip(predicted, 0.0, None)) / ts, depth, ts)
    return field, noise


def measurement_sd(model: SuperResModel, membership: Any, predicted: np.ndarray) -> np.ndarray:
    """Predictive standard deviation of what units with footprints ``membership`` measure.

    See :func:`measurement_variance`.
    """
    field, noise = measurement_variance(model, membership, predicted)
    return np.sqrt(np.maximum(field + noise, 0.0))
