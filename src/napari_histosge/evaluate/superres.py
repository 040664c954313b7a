"""Super-resolution protocol with true footprints: pool units, predict the map, score real units.

Blocks of ``factor`` x ``factor`` measured units are pooled into pseudo-units (counts summed)
whose footprints are the union of the members' footprints (a MultiPolygon of the member disks
for spots). A model sees only the pseudo-units; its superpixel map is averaged inside each real
unit's footprint and compared, gene by gene, with that unit's own measurement. The no-image
baselines are scored the same way, as maps averaged inside each real footprint:

- ``own_unit``: every superpixel takes its pseudo-unit's value (copying the measurement);
- ``knn``: inverse-distance mean of the 4 nearest pseudo-unit centres;
- ``smooth_lowrank``: Gaussian smoothing of the pseudo-units plus a low-rank projection
  (bandwidth and rank by leave-one-out on the pseudo-units);
- ``linear``: linear interpolation of the pseudo-unit values over their centres' Delaunay
  triangulation (nearest value outside it);
- ``own_unit_depth``: the own-unit copy seen through the counting: the expected
  log-normalised measurement of a real unit with its pseudo-unit's expression and an equal
  share of its counts (by area), i.e. without the bias of the log of sparse counts.

Models fitted with the pseudo-units' depths (total counts) and ``measurement="poisson"`` are
scored by :meth:`~napari_histosge.models.superres.SuperResModel.predict_units` on the real
footprints (expected measurement at each footprint's depth from the count-density map), the
others by their map's mean inside each real footprint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.geometry.footprints import pool_membership
from napari_histosge.metrics import pearson_per_gene
from napari_histosge.models.smoothing import smooth_lowrank

from .baselines import knn_interpolate
from .protocols import pool_pseudospots

if TYPE_CHECKING:
    from napari_histosge.models.superres import SuperResConfig

__all__ = [
    "BASELINES",
    "COUNT_BLIND",
    "log_normalise",
    "PooledSection",
    "loso_choice",
    "pool_section",
    "pooled_units",
    "rounded_r",
    "superres_baselines",
    "superres_footprints",
]

BASELINES = ("own_unit", "knn", "smooth_lowrank", "linear", "own_unit_depth")
#: Baselines that ignore the counting (the log-normalised values taken as they are).
COUNT_BLIND = BASELINES[:4]


def log_normalise(counts: Any) -> np.ndarray:
    """``log1p`` of counts normalised to 1e4 per unit (dense float64).

    Examples
    --------
    >>> log_normalise(np.array([[1, 1], [0, 2]])).round(2).tolist()
    [[8.52, 8.52], [0.0, 9.21]]
    """
    import scipy.sparse as sp

    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=float)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"Expected a (units, genes) count matrix, found shape {x.shape}.")
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e4)


def pooled_units(
    unit_xy: np.ndarray, membership: Any, counts: Any, factor: int
) -> tuple[np.ndarray, Any, np.ndarray, Any]:
    """Pool ``factor`` x ``factor`` lattice blocks of units, keeping their true footprints.

    Returns
    -------
    Pseudo-unit centres, summed counts, the block label of every unit and the pseudo-units'
    footprints on the superpixels (union of the members', row-normalised).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> xs, ys = np.meshgrid(np.arange(4.0), np.arange(4.0))
    >>> c, x, lab, m = pooled_units(np.c_[xs.ravel(), ys.ravel()], sp.eye(16), np.ones((16, 1)), 2)
    >>> m.shape, np.asarray(x).ravel().tolist()
    ((4, 16), [4.0, 4.0, 4.0, 4.0])
    """
    if int(factor) != factor or factor < 2:
        raise ValueError(f"Expected an integer pooling factor >= 2, found `{factor}`.")
    centres, pooled, labels = pool_pseudospots(unit_xy, counts, int(factor))
    return centres, pooled, labels, pool_membership(membership, labels)


def superres_baselines(
    unit_xy: np.ndarray,
    unit_values: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    spot_membership: Any,
    unit_membership: Any = None,
    unit_depth: np.ndarray | None = None,
    target_sum: float = 1e4,
) -> dict[str, np.ndarray]:
    """Score-ready no-image baselines: each as a map averaged inside every real unit's footprint.

    ``own_unit_depth`` needs the pseudo-units' footprints and depths (total counts); it is
    left out without them.

    Returns
    -------
    ``{name: (real units, genes)}`` for :data:`BASELINES`.
    """
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    pos = np.asarray(positions, dtype=float)
    uy = np.asarray(unit_values, dtype=np.float64)
    s = spot_membership
    out = {"own_unit": uy[np.asarray(labels)]}
    out["knn"] = np.asarray(s @ knn_interpolate(unit_xy, uy, pos, k=4))
    out["smooth_lowrank"] = np.asarray(s @ smooth_lowrank(unit_xy, uy).predict(pos))
    lin = LinearNDInterpolator(unit_xy, uy)(pos)
    bad = ~np.isfinite(lin).all(1)
    if bad.any():
        lin[bad] = NearestNDInterpolator(unit_xy, uy)(pos[bad])
    out["linear"] = np.asarray(s @ lin)
    if unit_membership is not None and unit_depth is not None:
        from napari_histosge.models._superres_depth import effective_sizes, expected_log1p

        lab = np.asarray(labels)
        share = effective_sizes(s) / effective_sizes(unit_membership)[lab]
        depth = np.asarray(unit_depth, dtype=np.float64)[lab] * share
        out["own_unit_depth"] = expected_log1p(np.expm1(uy[lab]) / target_sum, depth, target_sum)
    return out


@dataclass
class PooledSection:
    """A section pooled into pseudo-units: what a model sees and the real units' truth."""

    centres: np.ndarray  # (pseudo-units, 2)
    labels: np.ndarray  # (units,) pseudo-unit of every real unit
    membership: Any  # (pseudo-units, superpixels) footprints
    values: np.ndarray  # (pseudo-units, scored genes) log-normalised
    truth: np.ndarray  # (units, scored genes) the real units' log-normalised values
    depth: np.ndarray  # (pseudo-units,) total counts
    genes_idx: np.ndarray  # columns of ``counts`` scored


def pool_section(
    unit_xy: np.ndarray,
    spot_membership: Any,
    counts: Any,
    factor: int,
    n_genes: int = 250,
    genes: Sequence[int] | None = None,
) -> PooledSection:
    """Pool a section's units and choose the scored genes (see :func:`superres_footprints`).

    Genes: ``genes`` (column indices), else the ``n_genes`` of highest variance of the
    pseudo-units' log-normalised values (chosen on what a model sees, never on the real units).
    """
    centres, pooled, labels, unit_m = pooled_units(unit_xy, spot_membership, counts, factor)
    if len(centres) < 4:
        raise ValueError(
            f"Expected at least 4 pseudo-units, found {len(centres)}; use a smaller pooling factor."
        )
    uy_all = log_normalise(pooled)
    cols = (
        np.asarray(genes, dtype=np.int64)
        if genes is not None
        else np.argsort(-uy_all.var(0), kind="stable")[:n_genes]
    )
    return PooledSection(
        centres=centres,
        labels=labels,
        membership=unit_m,
        values=uy_all[:, cols],
        truth=log_normalise(counts)[:, cols],
        depth=np.asarray(pooled.sum(1), dtype=np.float64).ravel(),
        genes_idx=cols,
    )


def rounded_r(r: np.ndarray) -> list[float | None]:
    """Per-gene correlations for JSON: 4 decimals, ``None`` where undefined.

    Examples
    --------
    >>> rounded_r(np.array([0.123456, np.nan]))
    [0.1235, None]
    """
    return [None if not np.isfinite(v) else round(float(v), 4) for v in r]


def superres_footprints(
    features: np.ndarray | None,
    positions: np.ndarray,
    unit_xy: np.ndarray,
    spot_membership: Any,
    counts: Any,
    *,
    factor: int = 2,
    n_genes: int = 250,
    configs: Mapping[str, SuperResConfig] | None = None,
) -> dict[str, Any]:
    """Run the protocol on one section (arrays), for the baselines and each model config.

    Genes: the ``n_genes`` of highest variance of the pseudo-units' log-normalised values
    (chosen on what the model sees, never on the real units).

    Parameters
    ----------
    features
        ``(superpixels, d)`` dense features, or ``None``.
    positions
        ``(superpixels, 2)`` superpixel centres.
    unit_xy
        ``(units, 2)`` centres of the real units (same frame).
    spot_membership
        ``(units, superpixels)`` footprints of the real units (rows sum to 1).
    counts
        ``(units, genes)`` raw counts of the real units.
    factor
        Pooling block size.
    n_genes
        Number of genes scored.
    configs
        Model settings to score, by name (the default config when ``None``).

    Returns
    -------
    ``{"mean_r": {method: float}, "per_gene_r": {method: list}, "seconds": {...},
    "consistency": {config: max |footprint mean - unit|}, "n_units", "n_pseudo", "genes"}``.

    Examples
    --------
    >>> res = superres_footprints(feats, pos, xy, spot_m, counts, factor=2)  # doctest: +SKIP
    >>> res["mean_r"]["own_unit"], res["mean_r"]["default"]  # doctest: +SKIP
    """
    import time

    from napari_histosge.models.superres import SuperResConfig, fit_superres

    ps = pool_section(unit_xy, spot_membership, counts, factor, n_genes)
    uy, truth, unit_m, depth = ps.values, ps.truth, ps.membership, ps.depth
    out: dict[str, Any] = {"mean_r": {}, "per_gene_r": {}, "seconds": {}, "consistency": {}}
    t = time.perf_counter()
    base = superres_baselines(ps.centres, uy, ps.labels, positions, spot_membership, unit_m, depth)
    out["seconds"]["baselines"] = round(time.perf_counter() - t, 3)
    for name, pred in base.items():
        r = pearson_per_gene(pred, truth)
        out["mean_r"][name] = float(np.nanmean(r))
        out["per_gene_r"][name] = rounded_r(r)
    for name, cfg in (configs or {"default": SuperResConfig()}).items():
        t = time.perf_counter()
        model = fit_superres(features, positions, unit_m, uy, config=cfg, depth=depth)
        pred = model.predict()
        spots = (
            np.asarray(spot_membership @ pred)
            if cfg.measurement == "mean"
            else model.predict_units(spot_membership)
        )
        out["seconds"][name] = round(time.perf_counter() - t, 3)
        if cfg.aggregate == "log":
            out["consistency"][name] = float(np.abs(unit_m @ pred - uy).max())
        r = pearson_per_gene(spots, truth)
        out["mean_r"][name] = float(np.nanmean(r))
        out["per_gene_r"][name] = rounded_r(r)
    out["n_units"] = int(len(truth))
    out["n_pseudo"] = int(len(ps.centres))
    out["genes_idx"] = [int(c) for c in ps.genes_idx]
    return out


def loso_choice(scores: Mapping[str, Mapping[str, float]], held_out: str, how: str = "mean") -> str:
    """Pick the config with the best score over every section except ``held_out``.

    Parameters
    ----------
    scores
        ``{section: {config: score}}`` (for example the ratio to the best baseline).
    held_out
        The section whose own scores must not influence the choice.
    how
        ``"mean"`` over the other sections, or ``"min"`` (the worst of them: a config that
        must hold on every section).

    Examples
    --------
    >>> loso_choice({"a": {"x": 1.0, "y": 0.0}, "b": {"x": 0.0, "y": 2.0}}, "b")
    'x'
    >>> loso_choice({"a": {"x": 1.0, "y": 0.9}, "b": {"x": 0.5, "y": 0.8}, "c": {}}, "c", "min")
    'y'
    """
    if how not in ("mean", "min"):
        raise ValueError(f"Expected `how` 'mean' or 'min', found `{how}`.")
    others = [s for s in scores if s != held_out]
    if not others:
        raise ValueError("Expected scores of at least two sections, found one.")
    names: Sequence[str] = list(scores[others[0]])
    agg = np.mean if how == "mean" else np.min
    value = {n: float(agg([scores[s][n] for s in others])) for n in names}
    return max(names, key=lambda n: (value[n], -names.index(n)))
