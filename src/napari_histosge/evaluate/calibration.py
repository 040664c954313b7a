"""Calibration of the super-resolution map: pooled footprints, intervals and errors.

:func:`pooled_calibration` runs the pooled-footprint protocol of :mod:`.superres` (blocks of
``factor`` x ``factor`` units summed into pseudo-units with their true footprints; the model
sees only these) and scores every real unit twice:

- accuracy: the mean Pearson r over genes of the map (the expected measurement at each real
  footprint), next to the own pseudo-unit copy, kNN and smoothing + low rank;
- uncertainty: how often each unit's measured value falls inside the model's central 50, 80
  and 95 % predictive intervals, and whether the errors are larger where the model says so:
  within each gene, the mean absolute error of the fifth of units with the largest standard
  deviation over that of the fifth with the smallest.

The intervals are those of the measurement model (``coverage_50/80/95``): a unit's count of a
gene is Poisson at the unit's depth around the map's rate over its footprint, and that rate is
uncertain by the posterior variance of the footprint's mean (:func:`count_pit`). Counts are
discrete (a fifth to a third of the scored values are 0), so an interval's ends fall inside
the probability of one count, which is then counted in by its share of the interval
(:func:`count_coverage`). The Gaussian intervals around the expected measurement (posterior
variance plus the counting noise's variance at the unit's expected depth) are reported beside
them (``coverage_gaussian_50/80/95``): they cannot hold a 0 once a count is likely, and read low
where values are sparse.

:func:`evaluate_superres_pool` does it on a slide, as ``histosge evaluate --superres-pool``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress
from napari_histosge.metrics import pearson_per_gene

from .superres import pool_section, rounded_r, superres_baselines

if TYPE_CHECKING:
    from napari_histosge.models.superres import SuperResConfig
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions

__all__ = [
    "LEVELS",
    "count_coverage",
    "count_pit",
    "coverage",
    "error_sd_ratio",
    "evaluate_superres_pool",
    "pooled_calibration",
]

#: Nominal coverages of the central predictive intervals that are scored.
LEVELS = (0.5, 0.8, 0.95)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def coverage(
    truth: np.ndarray, pred: np.ndarray, sd: np.ndarray, levels: Sequence[float] = LEVELS
) -> dict[str, float]:
    """Fraction of values inside each central Gaussian interval ``pred ± z * sd``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = rng.normal(size=(4000, 3))
    >>> c = coverage(t, np.zeros_like(t), np.ones_like(t))
    >>> [round(v, 2) for v in c.values()]
    [0.5, 0.8, 0.95]
    """
    err = np.abs(np.asarray(truth, float) - np.asarray(pred, float))
    s = np.asarray(sd, float)
    return {f"coverage_{round(100 * q)}": float(np.mean(err <= _z(q) * s)) for q in levels}


def count_pit(
    counts: np.ndarray,
    depth: np.ndarray,
    rate: np.ndarray,
    field_var: np.ndarray,
    target_sum: float = 1e4,
    n_nodes: int = 20,
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictive CDF just below and at each observed count: ``(F(k - 1), F(k))``.

    The measurement model's distribution of a unit's count ``K`` of a gene: Poisson with mean
    ``depth * expm1(Z) / target_sum``, where the log-normalised expression ``Z`` is Gaussian
    around ``log1p(target_sum * rate)`` with the map's posterior variance ``field_var``.
    ``counts``, ``rate`` and ``field_var`` are ``(units, genes)``; ``depth`` ``(units,)`` the
    units' total counts. The mixture is integrated by Gauss-Hermite quadrature with
    ``n_nodes`` nodes where the Poisson noise is wide next to the spread of ``Z`` (sparse
    counts); where it is narrow (``sd(Z) * sqrt(mean) > 2``: many counts, where the nodes
    would be farther apart than a count's own width) the count is continuous enough for a
    Gaussian in log space, with variance ``field_var + 1 / mean`` and a continuity correction.

    Examples
    --------
    >>> f0, f1 = count_pit(np.array([[0.0]]), np.array([1e4]), np.array([[1e-4]]),
    ...                    np.array([[0.0]]))  # Poisson(1): P(K < 0), P(K <= 0)
    >>> round(float(f0[0, 0]), 3), round(float(f1[0, 0]), 3)
    (0.0, 0.368)
    """
    from scipy.special import gammaincc, gammaln, ndtr, xlogy

    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    w = w / w.sum()
    k = np.asarray(counts, dtype=np.float64)
    centre = np.log1p(target_sum * np.clip(np.asarray(rate, dtype=np.float64), 0.0, None))
    sd = np.sqrt(np.clip(np.asarray(field_var, dtype=np.float64), 0.0, None))
    d = np.asarray(depth, dtype=np.float64)
    below = np.empty_like(k)
    upto = np.empty_like(k)
    for i in range(0, len(k), block):
        rows = slice(i, i + block)
        z = centre[rows, :, None] + sd[rows, :, None] * x
        mean = d[rows, None, None] * np.clip(np.expm1(z), 0.0, None) / target_sum
        kk = k[rows, :, None]
        # P(K < k) = Q(k, mean), the regularised upper incomplete gamma (1 at k = 0)
        cdf_below = np.where(kk > 0, gammaincc(np.maximum(kk, 1.0), mean), 0.0)
        pmf = np.exp(xlogy(kk, mean) - mean - gammaln(kk + 1.0))
        below[rows] = cdf_below @ w
        upto[rows] = (cdf_below + pmf) @ w
    mean0 = d[:, None] * np.expm1(centre) / target_sum
    wide = sd * np.sqrt(mean0) > 2.0
    if wide.any():
        s = np.sqrt(sd[wide] ** 2 + 1.0 / mean0[wide])
        scale = (target_sum / np.broadcast_to(d[:, None], k.shape))[wide]
        kw, c = k[wide], centre[wide]
        lower = np.log1p(scale * np.maximum(kw - 0.5, 0.0))
        below[wide] = np.where(kw > 0, ndtr((lower - c) / s), 0.0)
        upto[wide] = ndtr((np.log1p(scale * (kw + 0.5)) - c) / s)
    return below, upto


def count_coverage(
    below: np.ndarray, upto: np.ndarray, levels: Sequence[float] = LEVELS
) -> dict[str, float]:
    """Coverage of the central intervals of a count distribution, from :func:`count_pit`.

    A count is discrete: the central ``q`` interval ends inside the probability of a count,
    and that count is inside it for the part of its probability that lies between
    ``(1 - q) / 2`` and ``(1 + q) / 2`` (the expectation of the randomised probability
    integral transform; exact coverage for a calibrated model, however many values are 0).

    Examples
    --------
    >>> count_coverage(np.array([0.0, 0.9]), np.array([0.5, 1.0]), levels=(0.5,))
    {'coverage_50': 0.25}
    """
    lo_p = np.asarray(below, dtype=np.float64)
    hi_p = np.asarray(upto, dtype=np.float64)
    mass = hi_p - lo_p
    out = {}
    for q in levels:
        lo, hi = (1.0 - q) / 2.0, (1.0 + q) / 2.0
        overlap = np.clip(np.minimum(hi_p, hi) - np.maximum(lo_p, lo), 0.0, None)
        point = (hi_p >= lo) & (hi_p <= hi)  # a count of no probability: inside or not
        share = np.where(mass > 1e-12, overlap / np.maximum(mass, 1e-12), point)
        out[f"coverage_{round(100 * q)}"] = float(np.mean(share))
    return out


def error_sd_ratio(
    truth: np.ndarray, pred: np.ndarray, sd: np.ndarray, fraction: float = 0.2
) -> float:
    """Mean over genes of MAE(most uncertain ``fraction``) / MAE(least uncertain ``fraction``).

    Within each gene (column) units are ranked by their standard deviation; genes whose
    least uncertain units have no error are left out.

    Examples
    --------
    >>> sd = np.repeat(np.linspace(0.1, 1.0, 10)[:, None], 2, axis=1)
    >>> round(error_sd_ratio(sd, np.zeros_like(sd), sd), 2)  # (0.9 + 1.0) / (0.1 + 0.2)
    6.33
    """
    err = np.abs(np.asarray(truth, float) - np.asarray(pred, float))
    s = np.asarray(sd, float)
    n = len(err)
    k = max(1, int(round(fraction * n)))
    order = np.argsort(s, axis=0, kind="stable")
    lo = np.take_along_axis(err, order[:k], axis=0).mean(0)
    hi = np.take_along_axis(err, order[-k:], axis=0).mean(0)
    ok = lo > 0
    return float(np.mean(hi[ok] / lo[ok])) if ok.any() else float("nan")


def pooled_calibration(
    features: np.ndarray | None,
    positions: np.ndarray,
    unit_xy: np.ndarray,
    spot_membership: Any,
    counts: Any,
    *,
    factor: int = 2,
    n_genes: int = 250,
    genes: Sequence[int] | None = None,
    config: SuperResConfig | None = None,
    keep_arrays: bool = False,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Score accuracy and calibration of the map on one section (arrays).

    Parameters
    ----------
    features
        ``(superpixels, d)`` dense features, or ``None``.
    positions
        ``(superpixels, 2)`` superpixel centres (µm).
    unit_xy
        ``(units, 2)`` centres of the real units (same frame).
    spot_membership
        ``(units, superpixels)`` footprints of the real units (rows sum to 1).
    counts
        ``(units, genes)`` raw counts of the real units.
    factor
        Pooling block size (2: 2x2, 3: 3x3).
    n_genes
        Genes scored: those of highest variance over the pseudo-units (what the model sees).
    genes
        Column indices of the genes to score instead.
    config
        Model settings (``measurement="poisson"`` and ``uncertainty=True`` are used).
    keep_arrays
        Also return the truth, predictions and the two parts of the predictive variance
        (``"arrays"``: ``truth``, ``pred``, ``field_var``, ``noise_var``), and what the count
        intervals use (``counts`` of the scored genes, ``unit_depth``, ``rate``).
    keep_model
        Also return the fitted model (``"model"``: refit its uncertainty with other settings
        on the same fit, as ``bench/superres_calibration.py`` does).

    Returns
    -------
    ``r_map``, ``r_own_unit``, ``r_knn``, ``r_smooth_lowrank`` (mean Pearson r over genes),
    ``coverage_50/80/95`` (count intervals), ``coverage_gaussian_50/80/95``,
    ``error_sd_ratio``, ``n_units``, ``n_pseudo``, ``n_genes``,
    ``factor``, ``per_gene`` (r of the map and of each baseline).
    """
    from dataclasses import replace

    import scipy.sparse as sp

    from napari_histosge.models._superres_uncertainty import measurement_variance
    from napari_histosge.models.superres import SuperResConfig, fit_superres

    cfg = replace(config or SuperResConfig(), measurement="poisson", uncertainty=True)
    ps = pool_section(unit_xy, spot_membership, counts, factor, n_genes, genes)
    uy, truth, unit_m, depth = ps.values, ps.truth, ps.membership, ps.depth
    if not (depth > 0).all():
        raise ValueError("Expected every pseudo-unit to hold counts, found empty ones.")
    base = superres_baselines(ps.centres, uy, ps.labels, positions, spot_membership, unit_m, depth)
    model = fit_superres(features, positions, unit_m, uy, config=cfg, depth=depth)
    pred = model.predict_units(spot_membership)
    field, noise = measurement_variance(model, spot_membership, pred)
    sd = np.sqrt(field + noise)
    out: dict[str, Any] = {"factor": int(factor)}
    per_gene: dict[str, list[float | None]] = {}
    for name, values in (("map", pred), *((k, base[k]) for k in base)):
        r = pearson_per_gene(values, truth)
        if name in ("map", "own_unit", "knn", "smooth_lowrank"):
            out[f"r_{name}"] = float(np.nanmean(r))
        per_gene[name] = rounded_r(r)
    cols = ps.genes_idx
    unit_counts = sp.csr_matrix(counts)
    k = np.asarray(unit_counts[:, cols].toarray(), dtype=np.float64)
    unit_depth = np.asarray(unit_counts.sum(1), dtype=np.float64).ravel()
    rate = model.unit_rates(spot_membership)
    below, upto = count_pit(k, unit_depth, rate, field, cfg.target_sum)
    out.update(count_coverage(below, upto))
    gauss = coverage(truth, pred, sd)
    out.update({key.replace("coverage_", "coverage_gaussian_"): v for key, v in gauss.items()})
    out["error_sd_ratio"] = error_sd_ratio(truth, pred, sd)
    out["uncertainty_scale"] = float(cfg.uncertainty_scale)
    out.update(n_units=int(len(truth)), n_pseudo=int(len(ps.centres)), n_genes=int(len(cols)))
    out["genes_idx"] = [int(c) for c in cols]
    out["per_gene"] = per_gene
    if keep_arrays:
        out["arrays"] = {
            "truth": truth,
            "pred": pred,
            "field_var": field,
            "noise_var": noise,
            "counts": k,
            "unit_depth": unit_depth,
            "rate": rate,
        }
    if keep_model:
        out["model"] = model
    return out


def evaluate_superres_pool(
    slide: Slide,
    *,
    factor: int = 2,
    genes: Sequence[str] | None = None,
    n_genes: int = 250,
    options: SuperResOptions | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Run :func:`pooled_calibration` on a slide, yielding progress (``histosge evaluate``).

    The superpixel grid and dense features are those of ``histosge run`` (cached in the
    store like them); the real units' footprints come from the slide's shapes and the counts
    from its table (raw counts are required: pooling sums them).

    Examples
    --------
    >>> metrics = run_generator(evaluate_superres_pool(slide, factor=2))  # doctest: +SKIP
    >>> metrics["r_map"], metrics["coverage_80"]  # doctest: +SKIP
    """
    import scipy.sparse as sp

    from napari_histosge.expression import count_matrix, is_log_normalized
    from napari_histosge.features.superpixel_cache import cached_features
    from napari_histosge.geometry.footprints import unit_membership
    from napari_histosge.workflows.superres import SuperResOptions, slide_grid

    if int(factor) != factor or factor < 2:
        raise ValueError(f"Expected a pooling factor of 2 or more, found `{factor}`.")
    if is_log_normalized(slide.table):
        raise ValueError(
            "Expected raw counts in the table for --superres-pool (pseudo-units sum counts), "
            "found log-normalised values."
        )
    opts = options or SuperResOptions()
    geom = slide.geometry
    um = geom.um_per_px
    sg = slide_grid(slide, opts.resolution_um)
    grid, res_um, pos = sg.grid, sg.resolution_um, sg.grid.positions
    yield Progress("evaluate", 0, 2, f"{grid.n} superpixels of {res_um:g} µm")
    feats, _meta = yield from cached_features(slide, opts, pos, sg.step, sg.box, res_um)
    member = unit_membership(sg.kind, sg.footprints, pos)
    counts = sp.csr_matrix(count_matrix(slide.table)[0])
    names = [str(v) for v in slide.table.var_names]
    cols = None
    if genes is not None:
        lookup = {str(g): i for i, g in enumerate(names)}
        missing = [g for g in genes if g not in lookup]
        if missing:
            raise KeyError(f"Expected genes of the table, found unknown {missing[:5]}.")
        cols = [lookup[g] for g in genes]
    yield Progress("evaluate", 1, 2, f"pooling {factor}x{factor}, fitting and scoring")
    out = pooled_calibration(
        feats,
        pos * um,
        geom.centers_px * um,
        member,
        counts,
        factor=factor,
        n_genes=n_genes,
        genes=cols,
        config=opts.config,
    )
    out["genes"] = [str(names[i]) for i in out.pop("genes_idx")]
    out["resolution_um"] = float(res_um)
    yield Progress("evaluate", 2, 2, "done")
    return out
