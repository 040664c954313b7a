"""Whole-slide scale with bounded memory: features in spatial blocks, maps rendered lazily.

A 40k x 40k px slide holds tens of thousands of lattice positions over centimetres of tissue.
Embedding them in one go would hold dense feature maps over the whole tissue's bounding box
(the built-in encoder keeps about 400 bytes per 4 µm cell: 2.5 GB for 1 cm²), and smoothed maps
of every gene at once. Here the positions are embedded block by block (squares of
:data:`BLOCK_UM` µm, each with its own maps over the block plus a margin), and the Gaussian maps
are a dask array computed a few genes at a time, like the nearest-position maps of
:mod:`napari_histosge.lazy_maps`. A slide that fits in one block is embedded exactly as
:func:`~napari_histosge.workflows.pipeline.iter_extract` does (with its feature cache).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress
from napari_histosge.maps import GeneMaps
from napari_histosge.predict import Predictions

if TYPE_CHECKING:
    from napari_histosge.features import Encoder
    from napari_histosge.geometry import SpotGeometry

    from .pipeline import ExtractOptions, Slide, SlideFeatures

__all__ = ["BLOCK_UM", "iter_extract_blocked", "rasterize_gaussian_lazy"]

#: Side of a feature block in µm (the built-in encoder's maps of one block: about 400 MB).
BLOCK_UM = 4000.0


def _blocks(xy: np.ndarray, side_px: float) -> list[np.ndarray]:
    """Return the indices of the positions in each square block of ``side_px``, in raster order."""
    cell = np.floor(xy / side_px).astype(np.int64)
    cell -= cell.min(axis=0)
    code = cell[:, 1] * (int(cell[:, 0].max()) + 1) + cell[:, 0]
    order = np.argsort(code, kind="stable")
    bounds = np.flatnonzero(np.diff(code[order])) + 1
    return np.split(order, bounds)


def iter_extract_blocked(
    slide: Slide,
    *,
    options: ExtractOptions,
    block_um: float = BLOCK_UM,
    encoder: Encoder | None = None,
) -> Generator[Progress, None, SlideFeatures]:
    """Embed the slide's positions and super-resolution positions, block by block.

    Parameters
    ----------
    slide
        The slide (its ``geometry.centers_px`` are the measured spots or the tissue lattice).
    options
        Feature options; the store's cache is used only when the slide fits in one block.
    block_um
        Side of a block in µm.
    encoder
        An encoder built from ``options``; built here when ``None``.

    Returns
    -------
    The features, as :func:`~napari_histosge.workflows.pipeline.iter_extract` returns them.

    Examples
    --------
    >>> feats = run_generator(iter_extract_blocked(slide, options=opts))  # doctest: +SKIP
    """
    from napari_histosge.features.extract import FeatureSet

    from .pipeline import SlideFeatures, iter_extract, iter_extract_at, new_positions

    if not block_um > 0:
        raise ValueError(f"Expected a positive block side in µm, found `{block_um}`.")
    geom = slide.geometry
    name, xy = new_positions(slide, options.positions)
    every = np.vstack([geom.centers_px, xy])
    blocks = _blocks(every, block_um / geom.um_per_px)
    if len(blocks) == 1:
        return (yield from iter_extract(slide, options=options))
    enc = encoder if encoder is not None else options.build_encoder()
    opts = replace(options, cache=False)
    feats: np.ndarray | None = None
    meta: dict[str, Any] = {}
    key = ""
    yield Progress("features", 0, len(blocks), f"{len(every)} positions in {len(blocks)} blocks")
    for i, idx in enumerate(blocks):
        sub_geom = replace(geom, centers_px=every[idx], spot_ids=np.arange(len(idx)).astype(str))
        sub = replace(slide, geometry=sub_geom, _measured_cache={})
        gen = iter_extract_at(sub, every[idx], options=opts, cache_name="block", encoder=enc)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                part: FeatureSet = stop.value
                break
        if feats is None:
            feats = np.empty((len(every), part.features.shape[1]), dtype=np.float32)
            meta, key = dict(part.meta), part.key
        feats[idx] = part.features
        yield Progress("features", i + 1, len(blocks), f"block {i + 1}/{len(blocks)}")
    assert feats is not None
    meta.pop("positions_digest", None)
    meta["blocks"] = {"count": len(blocks), "side_um": float(block_um)}
    n = len(geom.centers_px)
    out = SlideFeatures(
        spots=FeatureSet(feats[:n], key, meta, from_cache=False),
        positions_px=xy,
        positions=FeatureSet(feats[n:], key, meta, from_cache=False),
        positions_name=name,
        from_cache=False,
    )
    if options.cell_features:  # nuclei are segmented in tiles, in bounded memory too
        from napari_histosge.cells.features import iter_add_spot_cell_features

        out = yield from iter_add_spot_cell_features(slide, out, cache=options.cache)
    return out


def rasterize_gaussian_lazy(
    predictions: Predictions,
    *,
    genes: Sequence[str] | None = None,
    pitch_px: float | None = None,
    geometry: SpotGeometry | None = None,
    genes_per_block: int = 8,
) -> GeneMaps:
    """Gaussian maps like :func:`~napari_histosge.maps.rasterize`, as a lazy dask array.

    The neighbours and weights of every map pixel are computed once; each block of
    ``genes_per_block`` genes is then a weighted sum computed when read or written.

    Examples
    --------
    >>> xy = np.array([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [30.0, 30.0]])
    >>> p = Predictions(["g"], xy, np.arange(4.0)[:, None], np.array(["spot"] * 4),
    ...                 np.array(list("abcd")), 20.0)
    >>> from napari_histosge.maps import rasterize
    >>> eager = rasterize(p, pitch_px=5.0, method="gaussian").data
    >>> lazy = rasterize_gaussian_lazy(p, pitch_px=5.0).data
    >>> bool(np.allclose(np.asarray(lazy), eager, equal_nan=True))
    True
    """
    import dask.array as da
    from scipy.spatial import cKDTree

    from napari_histosge.lazy_maps import block_genes
    from napari_histosge.maps import map_layout

    xy = np.asarray(predictions.positions_px, dtype=float)
    names, cols = block_genes(predictions, genes, genes_per_block)
    spacing, pitch, origin, height, width = map_layout(xy, pitch_px, clip=geometry is not None)
    reach = 0.75 * spacing
    tree = cKDTree(xy)
    k = min(7, len(xy))
    sigma = spacing / 2.0
    inside_parts, near_parts, w_parts = [], [], []
    rows = max(1, 2**20 // max(width, 1))  # about a million map pixels per query
    gx = origin[0] + pitch * np.arange(width)
    for r0 in range(0, height, rows):
        gy = origin[1] + pitch * np.arange(r0, min(height, r0 + rows))
        grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
        dist, idx = tree.query(grid, k=k)
        dist, idx = dist.reshape(len(grid), k), idx.reshape(len(grid), k)
        ok = np.flatnonzero(dist[:, 0] <= reach)
        w = np.exp(-0.5 * (dist[ok] / sigma) ** 2)
        w /= w.sum(axis=1, keepdims=True)
        inside_parts.append(ok + r0 * width)
        near_parts.append(idx[ok].astype(np.int32))
        w_parts.append(w)
    inside = np.concatenate(inside_parts)
    near = np.concatenate(near_parts)
    weights = np.concatenate(w_parts)
    values: Any = np.asarray(predictions.values, dtype=np.float32)
    if not np.array_equal(cols, np.arange(values.shape[1])):
        values = values[:, cols]
    g = len(names)
    step = int(genes_per_block)
    chunks = (tuple(min(step, g - g0) for g0 in range(0, g, step)), (height,), (width,))

    def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        g0, g1 = (int(v) for v in block_info[None]["array-location"][0])
        out = np.full((g1 - g0, height * width), np.nan, dtype=np.float32)
        out[:, inside] = np.einsum("pk,pkg->gp", weights, values[:, g0:g1][near])
        return out.reshape(g1 - g0, height, width)

    data = da.map_blocks(block, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), "f4"))
    return GeneMaps(
        data=data, genes=names, pitch_px=pitch, origin_px=(float(origin[0]), float(origin[1]))
    )
