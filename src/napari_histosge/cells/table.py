"""Cells in the output store: ``histosge_nuclei`` (labels) and ``histosge_cells`` (table).

Each nucleus grows into a cell footprint by a bounded expansion (``expand_labels``: every
pixel within ``expand_um`` of a nucleus joins the nearest one). A cell's expression is the
super-resolved map averaged over its footprint: the footprint's pixels are counted in every
superpixel they fall in (a sparse ``(cells, superpixels)`` membership, as for measured units
in :mod:`napari_histosge.geometry.footprints`), so each cell takes the area-weighted mean of
the superpixel predictions under it.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress, run_generator
from napari_histosge.store import CELLS_KEY, NUCLEI_KEY

from .cache import iter_cached_nuclei, labels_element, nuclei_key
from .segment import Nuclei, NucleiOptions

if TYPE_CHECKING:
    from napari_histosge.geometry.footprints import SuperpixelGrid

__all__ = [
    "CELLS_KEY",
    "NUCLEI_KEY",
    "add_cells_to_store",
    "cell_membership",
    "grid_nuclei_key",
    "iter_add_cells",
    "iter_grid_nuclei",
    "morph_classes",
]


_MORPH = ("area_um2", "eccentricity", "ellipse_fill", "haematoxylin")


def _grid_index(grid: SuperpixelGrid) -> np.ndarray:
    """``(rows, cols)`` raster of each grid cell's index among the kept superpixels (-1: off)."""
    idx = np.full(grid.shape, -1, np.int64)
    r, c = grid.rows_cols
    idx[r, c] = np.arange(len(r))
    return idx


def _footprint_pairs(
    block: np.ndarray,
    y0: int,
    x0: int,
    nuc: Nuclei,
    grid: SuperpixelGrid,
    index: np.ndarray,
    stride: int = 1,
) -> np.ndarray:
    """Return the unique ``(cell, superpixel)`` keys of one block of footprints, and counts.

    ``block`` samples the labels every ``stride`` pixels from pixel ``(y0, x0)`` (in samples).
    """
    f = nuc.factor
    ys = nuc.offset_px[1] + ((y0 + np.arange(block.shape[0])) * stride + 0.5) * f
    xs = nuc.offset_px[0] + ((x0 + np.arange(block.shape[1])) * stride + 0.5) * f
    lo_x, lo_y = grid.origin[0] - grid.step / 2, grid.origin[1] - grid.step / 2
    rows = np.floor((ys - lo_y) / grid.step).astype(np.int64)
    cols = np.floor((xs - lo_x) / grid.step).astype(np.int64)
    ok_r = (rows >= 0) & (rows < grid.shape[0])
    ok_c = (cols >= 0) & (cols < grid.shape[1])
    sp = np.full(block.shape, -1, np.int64)
    sp[np.ix_(ok_r, ok_c)] = index[np.ix_(rows[ok_r], cols[ok_c])]
    sel = (block > 0) & (sp >= 0)
    key = block[sel].astype(np.int64) * (int(index.max()) + 1) + sp[sel]
    k, n = np.unique(key, return_counts=True)
    return np.c_[k, n]


def iter_cell_membership(
    nuc: Nuclei, grid: SuperpixelGrid, expand_um: float
) -> Generator[Progress, None, tuple[Any, np.ndarray]]:
    """Row-normalised ``(cells, kept superpixels)`` membership of the cell footprints.

    Returns
    -------
    The membership (cells in the order of ``nuc.table``) and each footprint's area in µm²
    (the part on the grid).
    """
    import scipy.sparse as sp
    from skimage.segmentation import expand_labels

    # Footprints are sampled about every 1.5 µm: a superpixel (8 µm) holds 25 samples or more,
    # and the expansion (a distance transform) costs a fraction of one at full resolution.
    stride = max(1, int(round(1.5 / nuc.um_per_px)))
    step_um = nuc.um_per_px * stride
    e = int(np.ceil(expand_um / step_um))
    lab = nuc.labels[::stride, ::stride] if stride > 1 else nuc.labels
    grown = lab.map_overlap(expand_labels, depth=e + 1, boundary=0, distance=e) if e else lab
    index = _grid_index(grid)
    n_sp = int(index.max()) + 1
    parts = []
    starts = [np.cumsum((0, *c))[:-1] for c in lab.chunks]
    total = len(starts[0]) * len(starts[1])
    for i, y0 in enumerate(starts[0]):
        for j, x0 in enumerate(starts[1]):
            block = np.asarray(grown.blocks[i, j].compute())
            parts.append(_footprint_pairs(block, int(y0), int(x0), nuc, grid, index, stride))
            yield Progress("cells", i * len(starts[1]) + j + 1, total, "cell footprints")
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    cell, spx = pairs[:, 0] // n_sp - 1, pairs[:, 0] % n_sp
    m = sp.csr_matrix((pairs[:, 1].astype(np.float64), (cell, spx)), shape=(nuc.n, n_sp))
    m.sum_duplicates()
    area = np.asarray(m.sum(1)).ravel()
    empty = np.flatnonzero(area == 0)
    if len(empty):  # a cell with no pixel on the grid takes its nearest superpixel
        from scipy.spatial import cKDTree

        _, near = cKDTree(grid.positions).query(nuc.table[["x", "y"]].to_numpy()[empty])
        m = m + sp.csr_matrix((np.ones(len(empty)), (empty, near)), shape=m.shape)
    rows = np.asarray(m.sum(1)).ravel()
    norm = sp.diags(1.0 / np.maximum(rows, 1e-12)) @ m
    return sp.csr_matrix(norm), area * step_um**2


def cell_membership(nuc: Nuclei, grid: SuperpixelGrid, expand_um: float) -> tuple[Any, np.ndarray]:
    """Run :func:`iter_cell_membership` to the end.

    Examples
    --------
    >>> member, area = cell_membership(nuc, res.grid, 3.0)  # doctest: +SKIP
    """
    return run_generator(iter_cell_membership(nuc, grid, expand_um))


def morph_classes(table: Any, k: int = 4, seed: int = 0) -> np.ndarray:
    """Unsupervised morphological classes: k-means of the standardised nucleus measures.

    Measures: log area, eccentricity, ellipse fill and haematoxylin. Classes are numbered by
    their mean area (``0``: the smallest nuclei).

    Examples
    --------
    >>> import pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame(rng.random((50, 4)) + 1, columns=list(_MORPH))
    >>> sorted(set(morph_classes(t, k=2).tolist()))
    [0, 1]
    """
    from scipy.cluster.vq import kmeans2

    n = len(table)
    if n == 0:
        return np.zeros(0, np.int64)
    x = table[list(_MORPH)].to_numpy(dtype=np.float64).copy()
    x[:, 0] = np.log(np.maximum(x[:, 0], 1e-6))
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    k = max(1, min(k, n))
    _, lab = kmeans2(x, k, seed=np.random.default_rng(seed), minit="++")
    means = np.array([x[lab == c, 0].mean() if (lab == c).any() else np.inf for c in range(k)])
    rank = np.empty(k, np.int64)
    rank[np.argsort(means)] = np.arange(k)
    return rank[lab]


def _units(slide: Any, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the measured unit each position lies in (``""``: none) and the nearest unit."""
    import shapely
    from scipy.spatial import cKDTree

    from napari_histosge.geometry.footprints import unit_footprints

    keys = slide.keys
    kind, fp, _ = unit_footprints(
        slide.sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
    )
    ids = np.asarray(slide.table.obs_names, dtype=object)
    centres = fp[0] if kind == "circles" else shapely.get_coordinates(shapely.centroid(fp))
    dist, near = cKDTree(centres).query(xy)
    if kind == "circles":
        inside = dist <= fp[1][near]
        within = np.where(inside, near, -1)
    else:
        tree = shapely.STRtree(fp)
        pt, poly = tree.query(shapely.points(xy), predicate="within")
        within = np.full(len(xy), -1)
        within[pt] = poly
    return np.where(within >= 0, ids[np.maximum(within, 0)], ""), ids[near]


def cell_values(member: Any, result: Any, maps: Any, genes: list[str]) -> np.ndarray:
    """Return ``(cells, genes)`` float32: the superpixel predictions averaged by ``member``.

    Taken from the rendered maps when they are in memory, else predicted; 64 genes at a time,
    so that no ``(superpixels, genes)`` copy of a whole slide's predictions is made.
    """
    out = np.empty((member.shape[0], len(genes)), np.float32)
    in_memory = maps is not None and isinstance(maps.data, np.ndarray)
    where = {g: i for i, g in enumerate(maps.genes)} if in_memory else {}
    r, c = result.grid.rows_cols
    for g0 in range(0, len(genes), 64):
        sub = genes[g0 : g0 + 64]
        if all(g in where for g in sub):
            sp_values = maps.data[[where[g] for g in sub]][:, r, c].T
        else:
            sp_values = result.model.predict(sub)
        out[:, g0 : g0 + len(sub)] = member @ np.asarray(sp_values, dtype=np.float64)
    return out


def _cells_table(
    slide: Any, nuc: Nuclei, values: np.ndarray, genes: list[str], area: np.ndarray, seed: int
) -> Any:
    import json

    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    t = nuc.table
    ids = np.arange(1, nuc.n + 1)
    xy = t[["x", "y"]].to_numpy(dtype=np.float64)
    um0 = nuc.um_per_px / nuc.factor
    unit, nearest = _units(slide, xy) if nuc.n else (np.zeros(0, str), np.zeros(0, str))
    obs = pd.DataFrame(
        {
            "region": pd.Categorical([NUCLEI_KEY] * nuc.n, categories=[NUCLEI_KEY]),
            "nucleus_id": ids,
            "x_um": xy[:, 0] * um0,
            "y_um": xy[:, 1] * um0,
            "area_um2": t["area_um2"].to_numpy(),
            "cell_area_um2": area,
            "eccentricity": t["eccentricity"].to_numpy(),
            "ellipse_fill": t["ellipse_fill"].to_numpy(),
            "haematoxylin": t["haematoxylin"].to_numpy(),
            "unit": pd.Categorical(unit),
            "nearest_unit": pd.Categorical(nearest),
            "morph_class": pd.Categorical(morph_classes(t, seed=seed).astype(str)),
        },
        index=pd.Index([str(i) for i in ids]),
    )
    adata = ad.AnnData(
        X=np.asarray(values, np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(genes))
    )
    adata.obsm["spatial"] = xy
    adata.uns["histosge"] = {
        "values": "super-resolved log1p(counts normalised to 1e4), mean over each cell footprint",
        "nuclei_json": json.dumps(nuc.meta, sort_keys=True),
    }
    return TableModel.parse(
        adata, region=NUCLEI_KEY, region_key="region", instance_key="nucleus_id"
    )


def grid_keep(grid: SuperpixelGrid) -> Any:
    """``callable(xy) -> bool``: whether scale-0 positions fall on a kept superpixel."""
    index = _grid_index(grid)

    def keep(xy: np.ndarray) -> np.ndarray:
        lo = np.asarray(grid.origin) - grid.step / 2
        rc = np.floor((np.asarray(xy)[:, ::-1] - lo[::-1]) / grid.step).astype(np.int64)
        ok = (rc >= 0).all(1) & (rc[:, 0] < grid.shape[0]) & (rc[:, 1] < grid.shape[1])
        out = np.zeros(len(rc), bool)
        out[ok] = index[rc[ok, 0], rc[ok, 1]] >= 0
        return out

    return keep


def grid_extent(grid: SuperpixelGrid) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of the area a superpixel grid covers (scale-0 pixels)."""
    half = grid.step / 2
    pos = grid.positions
    return (*(pos.min(0) - half), *(pos.max(0) + half))


def _grid_kept(grid: SuperpixelGrid) -> str:
    """Name of the rule keeping the nuclei on ``grid`` (part of their cache key)."""
    from napari_histosge.features.cache import positions_digest

    return f"superpixels {positions_digest(grid.positions)} step {float(grid.step):.6g}"


def grid_nuclei_key(
    slide: Any, grid: SuperpixelGrid, options: NucleiOptions
) -> tuple[str, dict[str, Any]]:
    """Cache key of the nuclei of ``slide`` on ``grid`` (:func:`.cache.nuclei_key`)."""
    keys = slide.keys
    image = slide.sdata.images[keys.image_key]
    um = float(slide.geometry.um_per_px)
    return nuclei_key(image, keys.image_key, um, options, grid_extent(grid), _grid_kept(grid))


def iter_grid_nuclei(
    slide: Any, grid: SuperpixelGrid, options: NucleiOptions | None = None, *, cache: bool = True
) -> Generator[Progress, None, Nuclei]:
    """Return the nuclei whose centroid lies on the grid: from the store's cache, or segmented.

    Segmented nuclei are cached in the store ``slide`` was read from (:mod:`.cache`) when
    ``cache``; ``meta["from_cache"]`` says which. Close the nuclei once used.

    Examples
    --------
    >>> nuc = run_generator(iter_grid_nuclei(slide, res.grid))  # doctest: +SKIP
    """
    return (
        yield from iter_cached_nuclei(
            slide,
            grid_extent(grid),
            keep=grid_keep(grid),
            kept=_grid_kept(grid),
            options=options,
            cache=cache,
        )
    )


def iter_add_cells(
    out: str | Path,
    slide: Any,
    result: Any,
    *,
    maps: Any = None,
    options: NucleiOptions | None = None,
    seed: int = 0,
    cache: bool = True,
    nuclei: Nuclei | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Segment nuclei on the superres grid, and write ``histosge_nuclei`` and ``histosge_cells``.

    Parameters
    ----------
    out
        The output store (a zarr v3 SpatialData store, such as ``export_superres`` wrote).
    slide
        The slide the model was fitted on.
    result
        The fitted :class:`~napari_histosge.workflows.superres.SuperResResult`.
    maps
        Its rendered maps, when in memory (saves predicting the superpixels again).
    options
        Segmentation and footprint settings.
    seed
        Seed of the morphological classes.
    cache
        Read the nuclei from the input store's cache, and cache them there when segmented
        (:func:`iter_grid_nuclei`).
    nuclei
        Nuclei already segmented on ``result.grid`` (the caller closes them); segmented or
        read from the cache when ``None``.

    Returns
    -------
    Counts and timings of the step.
    """
    import time

    from spatialdata.transformations import get_transformation

    from napari_histosge.store import write_element_atomic

    opts = options or NucleiOptions()
    t0 = time.perf_counter()
    grid = result.grid
    image = slide.sdata.images[slide.keys.image_key]
    given = nuclei is not None
    nuc = (
        nuclei
        if nuclei is not None
        else (yield from iter_grid_nuclei(slide, grid, opts, cache=cache))
    )
    try:
        t1 = time.perf_counter()
        if nuc.n == 0:  # nothing to tabulate: no element is written, the maps stay as they are
            yield Progress("cells", 1, 1, "no nuclei on the map's grid: no cells written")
            return {
                "n_cells": 0,
                "from_cache": bool(nuc.meta.get("from_cache")),
                "segment_s": round(t1 - t0, 2),
                **{k: nuc.meta.get(k) for k in ("threshold", "um_per_px", "n_tiles")},
            }
        member, area = yield from iter_cell_membership(nuc, grid, opts.expand_um)
        genes = list(result.genes)
        values = cell_values(member, result, maps, genes)
        table = _cells_table(slide, nuc, values, genes, area, seed)
        image_tf = dict(get_transformation(image, get_all=True))
        t2 = time.perf_counter()
        write_element_atomic(Path(out), "labels", NUCLEI_KEY, labels_element(nuc, image_tf))
        write_element_atomic(Path(out), "tables", CELLS_KEY, table)
    finally:
        if not given:
            nuc.close()
    return {
        "n_cells": nuc.n,
        "from_cache": bool(nuc.meta.get("from_cache")),
        "segment_s": round(t1 - t0, 2),
        "cells_s": round(t2 - t1, 2),
        "write_s": round(time.perf_counter() - t2, 2),
        **{k: nuc.meta[k] for k in ("threshold", "um_per_px", "n_tiles")},
    }


def add_cells_to_store(out: str | Path, slide: Any, result: Any, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`iter_add_cells` to the end.

    Examples
    --------
    >>> add_cells_to_store("out.zarr", slide, res, maps=maps)  # doctest: +SKIP
    """
    return run_generator(iter_add_cells(out, slide, result, **kwargs))
