"""Cell-aware features at any positions: what the nuclei around each position look like.

For every position and every disk of diameter ``scales_um``: nucleus density (per 1,000 µm²),
the mean log area, eccentricity, ellipse fill and haematoxylin of the nuclei whose centroid
lies inside, their mean distance to the nearest other nucleus, and the fractions of ``k``
unsupervised morphological classes (:func:`napari_histosge.cells.table.morph_classes`).
Disks without a nucleus take the slide's mean of each measure (density and fractions 0).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from napari_histosge.base.progress import Progress

__all__ = [
    "CELL_FEATURE_SCALES_UM",
    "cell_feature_names",
    "cell_features",
    "iter_add_cell_features",
    "iter_add_spot_cell_features",
    "spot_cell_features",
]

#: Disk diameters (µm) the nuclei are pooled over around each position.
CELL_FEATURE_SCALES_UM = (24.0, 48.0)
_MEASURES = ("density", "log_area", "eccentricity", "ellipse_fill", "haematoxylin", "nn_um")


def cell_feature_names(
    scales_um: Sequence[float] = CELL_FEATURE_SCALES_UM, k: int = 4
) -> list[str]:
    """Names of the columns of :func:`cell_features`.

    Examples
    --------
    >>> cell_feature_names((24.0,), k=2)[-3:]
    ['nn_um_24', 'class0_24', 'class1_24']
    """
    return [f"{m}_{s:g}" for s in scales_um for m in (*_MEASURES, *(f"class{c}" for c in range(k)))]


def cell_features(
    table: Any,
    positions_px: np.ndarray,
    um_per_px: float,
    *,
    scales_um: Sequence[float] = CELL_FEATURE_SCALES_UM,
    k: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """Pool the nuclei of ``table`` around each position (scale-0 pixels).

    Parameters
    ----------
    table
        Nuclei: ``x``, ``y`` (scale-0 pixels), ``area_um2``, ``eccentricity``,
        ``ellipse_fill``, ``haematoxylin`` (:attr:`napari_histosge.cells.Nuclei.table`).
    positions_px
        ``(n, 2)`` positions ``(x, y)``.
    um_per_px
        Scale-0 pixel size.
    scales_um
        Disk diameters.
    k
        Morphological classes.
    seed
        Seed of the classes' k-means.

    Returns
    -------
    ``(n, len(scales_um) * (6 + k))`` float32, columns as :func:`cell_feature_names`.

    Examples
    --------
    >>> import pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"x": rng.uniform(0, 100, 40), "y": rng.uniform(0, 100, 40),
    ...                   "area_um2": rng.uniform(20, 60, 40), "eccentricity": rng.random(40),
    ...                   "ellipse_fill": rng.random(40), "haematoxylin": rng.random(40)})
    >>> cell_features(t, np.array([[50.0, 50.0]]), 1.0).shape
    (1, 20)
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    from .table import morph_classes

    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    n_feat = len(scales_um) * (len(_MEASURES) + k)
    if len(table) == 0:
        return np.zeros((len(pos), n_feat), np.float32)
    xy = table[["x", "y"]].to_numpy(dtype=np.float64)
    tree = cKDTree(xy)
    nn = tree.query(xy, k=2)[0][:, 1] * um_per_px if len(xy) >= 2 else np.zeros(1)
    per = np.c_[
        np.log(np.maximum(table["area_um2"].to_numpy(dtype=np.float64), 1e-6)),
        table[["eccentricity", "ellipse_fill", "haematoxylin"]].to_numpy(dtype=np.float64),
        nn,
    ]
    classes = np.eye(k)[morph_classes(table, k=k, seed=seed)] if k else np.zeros((len(xy), 0))
    fill = per.mean(0)
    out = []
    for s in scales_um:
        r_px = float(s) / 2.0 / um_per_px
        hits = tree.query_ball_point(pos, r_px)
        lens = np.fromiter((len(h) for h in hits), np.int64, len(hits))
        cols = np.concatenate([np.asarray(h, np.int64) for h in hits]) if lens.sum() else []
        rows = np.repeat(np.arange(len(pos)), lens)
        m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(pos), len(xy)))
        cnt = lens.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.asarray(m @ per) / cnt[:, None]
            frac = np.asarray(m @ classes) / cnt[:, None]
        empty = cnt == 0
        mean[empty] = fill
        frac[empty] = 0.0
        density = cnt / (np.pi * (float(s) / 2.0) ** 2) * 1e3
        out.append(np.c_[density, mean, frac])
    return np.concatenate(out, axis=1).astype(np.float32)


def spot_cell_features(
    table: Any,
    positions_px: np.ndarray,
    um_per_px: float,
    diameter_um: float,
    *,
    k: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """Nuclei statistics of spots: :func:`cell_features` in each spot and in twice its width.

    Examples
    --------
    >>> import pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"x": rng.uniform(0, 100, 40), "y": rng.uniform(0, 100, 40),
    ...                   "area_um2": rng.uniform(20, 60, 40), "eccentricity": rng.random(40),
    ...                   "ellipse_fill": rng.random(40), "haematoxylin": rng.random(40)})
    >>> spot_cell_features(t, np.array([[50.0, 50.0]]), 1.0, 55.0).shape
    (1, 20)
    """
    if not (np.isfinite(diameter_um) and diameter_um > 0):
        raise ValueError(f"Expected a positive spot diameter (µm), found `{diameter_um}`.")
    scales = (float(diameter_um), 2.0 * float(diameter_um))
    return cell_features(table, positions_px, um_per_px, scales_um=scales, k=k, seed=seed)


def iter_add_cell_features(
    slide: Any, feats: np.ndarray, meta: dict[str, Any], positions_px: np.ndarray
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, Any]]]:
    """Segment the nuclei around ``positions_px`` and append their features to ``feats``.

    The option ``cell_features`` of :class:`~napari_histosge.workflows.superres.SuperResOptions`.

    Returns
    -------
    The features with :func:`cell_feature_names` appended, and ``meta`` with a record of it.
    """
    from .segment import iter_segment_nuclei

    um = slide.geometry.um_per_px
    pos = np.asarray(positions_px, dtype=np.float64)
    reach = max(CELL_FEATURE_SCALES_UM) / 2.0 / um
    extent = (*(pos.min(0) - reach), *(pos.max(0) + reach))
    image = slide.sdata.images[slide.keys.image_key]
    nuc = yield from iter_segment_nuclei(image, um, extent=extent)
    try:
        cf = cell_features(nuc.table, pos, um)
    finally:
        nuc.close()
    info = {"n_nuclei": nuc.n, "names": cell_feature_names(), "threshold": nuc.meta["threshold"]}
    return np.hstack([feats, cf]), {**meta, "dim": int(feats.shape[1] + cf.shape[1]), "cells": info}


def iter_add_spot_cell_features(
    slide: Any, feats: Any, *, cache: bool = True
) -> Generator[Progress, None, Any]:
    """Append the nuclei statistics of every spot and position to a slide's features.

    The option ``cell_features`` of :class:`~napari_histosge.workflows.pipeline.ExtractOptions`
    (the attention models' spot features): :func:`spot_cell_features` in each spot's disk and
    in twice its width, for the measured spots and the new positions alike. The nuclei are
    segmented once over the area of all of them (read from, and written to, the store's cache
    when ``cache``: :func:`.cache.iter_cached_nuclei`).

    Parameters
    ----------
    slide
        The slide.
    feats
        Its :class:`~napari_histosge.workflows.pipeline.SlideFeatures`.
    cache
        Use the store's nuclei cache.

    Returns
    -------
    The features with :func:`cell_feature_names` columns appended; ``meta["cells"]`` records
    it (and ``meta["dim"]`` the new width, which a model checks its features against).
    """
    from dataclasses import replace

    from .cache import iter_cached_nuclei

    g = slide.geometry
    um = float(g.um_per_px)
    diameter_um = float(g.diameter_px) * um
    every = np.vstack([g.centers_px, feats.positions_px]).astype(np.float64)
    reach = 2.0 * diameter_um / um
    extent = (*(every.min(0) - reach), *(every.max(0) + reach))
    nuc = yield from iter_cached_nuclei(slide, extent, cache=cache)
    try:
        cf = spot_cell_features(nuc.table, every, um, diameter_um)
    finally:
        nuc.close()
    scales = (diameter_um, 2.0 * diameter_um)
    info = {"names": cell_feature_names(scales), "diameter_um": diameter_um, "n_nuclei": nuc.n}
    n = len(g.centers_px)

    def add(fs: Any, part: np.ndarray) -> Any:
        f = np.hstack([fs.features, part]).astype(np.float32)
        return replace(fs, features=f, meta={**fs.meta, "dim": int(f.shape[1]), "cells": info})

    return replace(feats, spots=add(feats.spots, cf[:n]), positions=add(feats.positions, cf[n:]))
